"""Shared pieces of the two teacher trainers (continued MLM, emotion fine-tuning):
length-bucketed static-shape text batches, a sharded jitted train step for a
FlaxBert module, and HF-format saving. TensorFlow-free.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mced_jax import sharding as shd


class TextState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any


def encode(tokenizer, texts, max_tokens: int) -> list[np.ndarray]:
  """WordPiece ids ([CLS] ... [SEP]) per text, truncated to max_tokens."""
  enc = tokenizer.tok(list(texts), add_special_tokens=True, truncation=True,
                      max_length=max_tokens)["input_ids"]
  return [np.asarray(e, np.int32) for e in enc]


def bucket_batches(ids: list[np.ndarray], batch_size: int, buckets, seed: int | None):
  """Index batches grouped by length bucket; shuffled when seed is not None.

  Yields (indices, length): every batch of one bucket pads to that bucket's length,
  so the step compiles once per bucket. The last batch of a bucket may be short:
  `pad_batch` fills it with zero-weight rows.
  """
  buckets = sorted(buckets)
  lengths = np.array([len(x) for x in ids])
  which = np.searchsorted(buckets, lengths)  # first bucket >= length
  which = np.minimum(which, len(buckets) - 1)
  rng = np.random.default_rng(seed) if seed is not None else None
  out = []
  for b, length in enumerate(buckets):
    idx = np.flatnonzero(which == b)
    if rng is not None:
      idx = rng.permutation(idx)
    out += [(idx[i:i + batch_size], length) for i in range(0, len(idx), batch_size)]
  if rng is not None:
    out = [out[i] for i in rng.permutation(len(out))]
  return out


def pad_batch(ids: list[np.ndarray], idx, length: int, batch_size: int, extra=None):
  """[batch_size, length] ids + attention mask + example weight (0 for filler)."""
  x = np.zeros((batch_size, length), np.int32)
  for r, i in enumerate(idx):
    seq = ids[i][:length]
    x[r, :len(seq)] = seq
  w = np.zeros(batch_size, np.float32)
  w[:len(idx)] = 1.0
  batch = {"input_ids": x, "attention_mask": (x > 0).astype(np.int32), "weight": w}
  for k, v in (extra or {}).items():
    col = np.zeros((batch_size,) + v.shape[1:], v.dtype)
    col[:len(idx)] = v[idx]
    batch[k] = col
  return batch


def adamw(lr: float, total_steps: int, warmup_steps: int, weight_decay: float):
  sched = optax.join_schedules(
      [optax.linear_schedule(0.0, lr, max(warmup_steps, 1)),
       optax.linear_schedule(lr, 0.0, max(total_steps - warmup_steps, 1))], [warmup_steps])
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.adamw(sched, weight_decay=weight_decay,
                               mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))
  return tx, sched


def make_step(loss_fn: Callable, tx, mesh, state_sh, seed: int):
  """jit(step) over the mesh: batch over `data`, state donated.

  loss_fn(params, batch, rng) -> (loss, aux dict)."""
  base = jax.random.PRNGKey(seed)

  def step(state: TextState, batch):
    rng = jax.random.fold_in(base, state.step)
    (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state), aux

  return jax.jit(step, in_shardings=(state_sh, shd.batch_sharding(mesh)),
                 out_shardings=(state_sh, shd.replicated(mesh)), donate_argnums=(0,))


def init_state(params, tx, mesh) -> tuple[TextState, Any]:
  state = TextState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  sh = jax.tree.map(lambda _: shd.replicated(mesh), state)
  return jax.device_put(state, sh), sh


def save_hf(model_cls, config, params, out_dir: str, vocab_path: str) -> None:
  """A Hugging Face directory (config.json + flax_model.msgpack + vocab.txt) that
  FlaxBert*.from_pretrained and our teacher loader read back."""
  tmp = out_dir + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  model = model_cls(config, _do_init=False)
  model.save_pretrained(tmp, params=jax.device_get(params))
  shutil.copy(vocab_path, os.path.join(tmp, "vocab.txt"))
  shutil.rmtree(out_dir, ignore_errors=True)
  os.replace(tmp, out_dir)


def finished_results(workdir: str, stage: str):
  """The stage's results when its model and results already exist (then the stage
  is skipped), else None. Returns (results or None, results path, model dir)."""
  from absl import logging  # pylint: disable=import-outside-toplevel
  os.makedirs(workdir, exist_ok=True)
  results_path = os.path.join(workdir, "results.json")
  model_dir = os.path.join(workdir, "model")
  if os.path.exists(results_path) and os.path.exists(os.path.join(model_dir, "config.json")):
    logging.info("%s: %s exists, skipping (delete it to retrain)", stage, results_path)
    with open(results_path, encoding="utf-8") as f:
      return json.load(f), results_path, model_dir
  return None, results_path, model_dir


def restore_target(state, shardings):
  """ShapeDtypeStructs with shardings: what orbax restores into."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)
