"""Exported models: a directory with `params.msgpack` and `model.json`.

Distillation exports the student (`WORKDIR/distill/student/`) for fine-tuning;
fine-tuning exports a ready classifier (`WORKDIR/finetune/model_<variant>/`) that
`python -m mced_jax.tools.predict --checkpoint=DIR` loads. `model.json` holds what is
needed to rebuild and feed the network: the student's architecture, class names
and the feature standardisation (mean/std per IS16 dimension).

Saving works from any process layout: parameters sharded over several processes
(FSDP) are gathered by every process, and process 0 writes (through mced_jax.runtime.fs,
so the directory may be a URL).
"""

from __future__ import annotations

import json

import flax.serialization
import jax
import numpy as np

from mced_jax.runtime import fs

PARAMS, META = "params.msgpack", "model.json"
STUDENT_FIELDS = ("num_classes", "feature_dim", "conv_channels", "conv_kernels",
                  "conv_strides", "d_model", "num_layers", "num_heads", "mlp_dim", "dropout",
                  "classifier_hidden", "pooling", "input_stats", "speaker_norm")


def student_dict(student_cfg) -> dict:
  return {k: (list(student_cfg[k]) if isinstance(student_cfg[k], (tuple, list))
              else student_cfg[k]) for k in STUDENT_FIELDS}


def to_host(params):
  """Numpy copies of (possibly multi-process sharded) arrays, on every process."""
  leaves = jax.tree.leaves(params)
  if any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in leaves):
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    params = multihost_utils.process_allgather(params, tiled=True)
  return jax.tree.map(np.asarray, jax.device_get(params))


def save(directory: str, params, meta: dict) -> None:
  """Writes params then model.json (a directory with model.json is complete);
  every process must call it (the gather is collective), process 0 writes."""
  host = to_host(params)
  if jax.process_index() != 0:
    return
  fs.write_bytes(fs.join(directory, PARAMS), flax.serialization.msgpack_serialize(host))
  fs.write_bytes(fs.join(directory, META), json.dumps(meta, indent=1).encode())


def save_student(directory: str, config, params, step: int, source: str, stats=None,
                 class_names=None) -> None:
  """The distilled student (no soft-align weights), for fine-tuning; `class_names`
  are the teacher's, which the student's own head predicts."""
  d = config.distill
  meta = {"kind": "distilled_student", "student": student_dict(config.student),
          "teacher_classes": int(config.student.num_classes), "step": step,
          "teacher_class_names": list(class_names) if class_names else None,
          "data_source": source, "teacher_layers": list(d.teacher_layers),
          "student_layers": list(d.student_layers), "rl_weight": float(d.rl_weight),
          "lambdas": list(d.lambdas)}
  if stats is not None:
    meta["feature_mean"], meta["feature_std"] = (np.asarray(stats[0]).tolist(),
                                                 np.asarray(stats[1]).tolist())
  save(directory, params, meta)


def exists(directory: str) -> bool:
  return all(fs.exists(fs.join(directory, n)) for n in (PARAMS, META))


def load(directory: str):
  """(params, meta) of an exported model."""
  if not exists(directory):
    missing = [n for n in (PARAMS, META) if not fs.exists(fs.join(directory, n))]
    raise FileNotFoundError(f"{directory}: not an exported mced_jax model (missing "
                            f"{', '.join(missing)})")
  meta = json.loads(fs.read_text(fs.join(directory, META)))
  try:
    params = flax.serialization.msgpack_restore(fs.read_bytes(fs.join(directory, PARAMS)))
  except Exception as e:  # noqa: BLE001
    raise ValueError(f"{directory}/{PARAMS}: unreadable ({e})") from e
  return params, meta
