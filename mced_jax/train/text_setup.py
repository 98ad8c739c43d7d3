"""What the two teacher trainers (continued MLM, emotion fine-tuning) share: the
finished-stage check, the tokenizer of the starting model, and a bucketed text
job on the mesh (rows this process feeds, steps per epoch, optimizer, state)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
from absl import logging

from data_pipelines import buckets as buckets_lib
from mced_jax.kernels import precision
from mced_jax.runtime import fs
from mced_jax.runtime import sharding as shd
from mced_jax.train import kit


def finished(name: str, out: str, model_dir: str) -> dict | None:
  """The stage's results when its model and results exist (the stage is skipped)."""
  results = fs.join(out, "results.json")
  if fs.exists(results) and fs.exists(fs.join(model_dir, "config.json")):
    logging.info("%s: %s exists, skipping (delete it to retrain)", name, results)
    return fs.read_json(results)
  return None


def start(name: str, c, layout, model_dir: str):
  """(finished results or None, the starting model's dir, its tokenizer)."""
  done = finished(name, layout.stage(name), model_dir)
  if done is not None:
    return done, None, None
  from data_pipelines.tokenize import WordPiece  # pylint: disable=import-outside-toplevel
  init_dir = layout.teacher_init(c.init, f"{name}.init")
  # The tokenizer reads a local vocab.txt: a URL model dir is copied to a temp dir.
  from mced_jax.models.teacher import local_dir  # pylint: disable=import-outside-toplevel
  vocab = os.path.join(local_dir(init_dir), "vocab.txt")
  return None, init_dir, WordPiece(vocab, max_tokens=c.max_tokens)


@dataclasses.dataclass
class TextJob:
  mesh: Any
  policy: precision.Policy
  rows: np.ndarray  # rows of each global batch this process feeds
  buckets: tuple  # static token lengths
  lengths: np.ndarray  # tokens per training text
  steps_per_epoch: int
  total: int
  tx: Any
  schedule: Any
  spec: kit.StateSpec

  def epoch_batches(self, epoch: int, seed: int, batch_size: int):
    """[(indices, bucket length)] of one epoch, shuffled by (seed + epoch)."""
    return buckets_lib.bucketed_batches(self.lengths, batch_size, self.buckets, seed + epoch)


def text_job(config, c, params, train_ids) -> TextJob:
  """`c`: the stage's config section (batch_size, buckets, max_tokens, epochs,
  learning_rate, warmup_ratio, b2, weight_decay)."""
  mesh, policy = shd.from_config(config.mesh), precision.from_config(config)
  shd.check_batch(c.batch_size, mesh)
  buckets = buckets_lib.token_buckets(c.buckets, c.max_tokens)
  lengths = np.array([len(x) for x in train_ids])
  spe = len(buckets_lib.bucketed_batches(lengths, c.batch_size, buckets, 0))
  total = spe * c.epochs
  tx, schedule = kit.make_optimizer(learning_rate=c.learning_rate, total_steps=total,
                                    warmup_steps=int(c.warmup_ratio * total), b2=c.b2,
                                    weight_decay=c.weight_decay)
  return TextJob(mesh, policy, shd.host_rows(mesh, c.batch_size), buckets, lengths, spe,
                 total, tx, schedule, kit.state_spec(params, tx, mesh))
