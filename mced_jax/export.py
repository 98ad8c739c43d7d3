"""Exported models: a directory with `params.msgpack` and `model.json`.

Distillation exports the student (`WORKDIR/distill/student/`) for fine-tuning;
fine-tuning exports a ready classifier (`WORKDIR/finetune/model_<variant>/`) that
`python -m mced_jax.predict --checkpoint=DIR` loads. `model.json` holds what is
needed to rebuild and feed the network: the student's architecture, class names
and the feature standardisation (mean/std per IS16 dimension).
"""

from __future__ import annotations

import json
import os

import flax.serialization
import jax
import numpy as np

PARAMS, META = "params.msgpack", "model.json"
STUDENT_FIELDS = ("num_classes", "feature_dim", "conv_channels", "conv_kernels",
                  "conv_strides", "d_model", "num_layers", "num_heads", "mlp_dim", "dropout",
                  "classifier_hidden")


def student_dict(student_cfg) -> dict:
  return {k: (list(student_cfg[k]) if isinstance(student_cfg[k], (tuple, list))
              else student_cfg[k]) for k in STUDENT_FIELDS}


def save(directory: str, params, meta: dict) -> None:
  """Writes atomically (temp files renamed), so a crash never leaves half a model."""
  os.makedirs(directory, exist_ok=True)
  params = jax.device_get(params)
  for name, data in ((PARAMS, flax.serialization.msgpack_serialize(
      jax.tree.map(np.asarray, params))), (META, json.dumps(meta, indent=1).encode())):
    tmp = os.path.join(directory, name + ".tmp")
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, os.path.join(directory, name))


def exists(directory: str) -> bool:
  return all(os.path.exists(os.path.join(directory, n)) for n in (PARAMS, META))


def load(directory: str):
  """(params, meta) of an exported model."""
  if not exists(directory):
    missing = [n for n in (PARAMS, META) if not os.path.exists(os.path.join(directory, n))]
    raise FileNotFoundError(f"{directory}: not an exported mced_jax model (missing "
                            f"{', '.join(missing)})")
  with open(os.path.join(directory, META), encoding="utf-8") as f:
    meta = json.load(f)
  with open(os.path.join(directory, PARAMS), "rb") as f:
    try:
      params = flax.serialization.msgpack_restore(f.read())
    except Exception as e:  # noqa: BLE001
      raise ValueError(f"{directory}/{PARAMS}: unreadable ({e})") from e
  return params, meta
