"""tf.data reader for prepared MCED datasets.

Per-host sharding (each process reads its own even split), seeded shuffling,
standardisation with the train-split statistics, truncation to max lengths,
length bucketing to a few static frame counts (so the jitted step compiles at most
once per bucket), padding masks, prefetch. Batches come out as numpy dicts:

  features [B, T_bucket, 130] float32, frame_mask [B, T_bucket] bool,
  input_ids [B, S] int32, attention_mask [B, S] int32, label [B] int32 (-1: none),
  example_mask [B] bool (False for rows that only pad a final partial batch)

Training streams are infinite and deterministic given the seed; `start_step` skips
the batches already consumed so a resumed run continues with the next batch.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

FEATURE_DIM = 130


def _tf():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.set_visible_devices([], "GPU")  # TF must never take accelerator memory
  return tf


def host_split(split: str, process_index: int, process_count: int) -> str:
  """This host's disjoint share of `split`; the shares of all hosts cover it."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  if process_count == 1:
    return split
  return tfds.even_splits(split, n=process_count, drop_remainder=False)[process_index]


def dataset_dir(prepared_dir: str, name: str | None = None) -> str:
  """The TFDS directory inside a `data_pipelines.prepare` output directory."""
  root = os.path.join(prepared_dir, "tfds", "mced_pairs")
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{prepared_dir}: no prepared dataset (expected {root}); run "
                            "python -m data_pipelines.prepare first")
  names = sorted(os.listdir(root)) if name is None else [name]
  names = [n for n in names if not n.startswith(".") and "incomplete" not in n]
  if len(names) != 1:
    raise ValueError(f"{root}: pick one dataset name of {names}")
  versions = sorted(v for v in os.listdir(os.path.join(root, names[0]))
                    if not v.startswith("incomplete"))
  if not versions:
    raise FileNotFoundError(f"{root}/{names[0]}: no finished version")
  return os.path.join(root, names[0], versions[-1])


def load_stats(prepared_dir: str, with_storage: bool = False):
  """(mean, std) of the train split; with_storage adds 'raw' or 'normalized' (how
  the TFRecords hold the features)."""
  path = os.path.join(prepared_dir, "feature_stats.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{prepared_dir}: no feature_stats.json (not a prepared dataset?)")
  with open(path, encoding="utf-8") as f:
    s = json.load(f)
  out = np.asarray(s["mean"], np.float32), np.asarray(s["std"], np.float32)
  return out + (s.get("stored", "raw"),) if with_storage else out


@dataclasses.dataclass
class ReaderConfig:
  batch_size: int  # per host
  max_frames: int = 1000
  max_tokens: int = 64
  frame_buckets: tuple = (250, 500, 1000)  # static frame counts; last >= max_frames
  train: bool = True  # shuffle + repeat forever (else one ordered pass)
  seed: int = 0
  shuffle_buffer: int = 2048
  cache: bool = False  # keep decoded examples in memory (corpora that fit)
  normalize: bool = True
  sep_id: int = 102
  with_ids: bool = False  # also return utt_id strings (evaluation, tests)


def make_dataset(prepared_dir: str, split: str, cfg: ReaderConfig, *, name: str | None = None,
                 process_index: int = 0, process_count: int = 1, start_step: int = 0):
  """A tf.data.Dataset of padded batches (see module docstring)."""
  tf = _tf()
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  buckets = sorted(int(b) for b in cfg.frame_buckets)
  if buckets[-1] < cfg.max_frames:
    buckets.append(int(cfg.max_frames))
  buckets = [b for b in buckets if b <= cfg.max_frames]
  builder = tfds.builder_from_directory(dataset_dir(prepared_dir, name))
  # TFDS split syntax: "train", "train+validation", "train[:80%]"
  parts = [p.split("[")[0].strip() for p in split.split("+")]
  if not all(p in builder.info.splits for p in parts):
    raise ValueError(f"{prepared_dir}: no split {split!r}; it has {list(builder.info.splits)}")
  has_label = "label" in builder.info.features
  read_cfg = tfds.ReadConfig(shuffle_seed=cfg.seed, interleave_cycle_length=4)
  ds = builder.as_dataset(split=host_split(split, process_index, process_count),
                          shuffle_files=cfg.train, read_config=read_cfg)
  mean, std, stored = load_stats(prepared_dir, with_storage=True)
  mean, std = tf.constant(mean), tf.constant(std)

  def decode(ex):
    n_frames = tf.shape(ex["acoustic"])[0]
    x = tf.cast(ex["acoustic"], tf.float32)[: cfg.max_frames]
    if cfg.normalize and stored == "raw":
      x = (x - mean) / std
    elif not cfg.normalize and stored == "normalized":
      x = x * std + mean
    ids = ex["input_ids"][: cfg.max_tokens]
    cut = tf.shape(ex["input_ids"])[0] > cfg.max_tokens
    ids = tf.cond(cut, lambda: tf.concat([ids[:-1], [cfg.sep_id]], 0), lambda: ids)
    out = {"features": x, "frame_mask": tf.ones(tf.shape(x)[:1], tf.bool),
           "input_ids": ids, "attention_mask": tf.ones(tf.shape(ids), tf.int32),
           "label": tf.cast(ex["label"], tf.int32) if has_label else tf.constant(-1, tf.int32),
           "example_mask": tf.constant(True),
           # over-long inputs are truncated, and counted by the trainer
           "truncated_frames": n_frames > cfg.max_frames, "truncated_tokens": cut}
    if cfg.with_ids:
      out["utt_id"] = ex["utt_id"]
    return out

  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if cfg.cache:
    ds = ds.cache()
  if cfg.train:
    ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed, reshuffle_each_iteration=True).repeat()
  bounds = tf.constant(buckets, tf.int32)

  def key_fn(ex):
    n = tf.shape(ex["features"])[0]
    return tf.cast(tf.argmax(tf.cast(n <= bounds, tf.int32)), tf.int64)

  def reduce_fn(key, window):
    frames = tf.cast(tf.gather(bounds, key), tf.int64)
    shapes = {"features": tf.stack([frames, FEATURE_DIM]), "frame_mask": tf.stack([frames]),
              "input_ids": [cfg.max_tokens], "attention_mask": [cfg.max_tokens],
              "label": [], "example_mask": [], "truncated_frames": [],
              "truncated_tokens": []}
    if cfg.with_ids:
      shapes["utt_id"] = []
    return window.padded_batch(cfg.batch_size, padded_shapes=shapes,
                               drop_remainder=cfg.train)

  ds = ds.group_by_window(key_fn, reduce_fn, window_size=cfg.batch_size)
  if start_step:
    ds = ds.skip(start_step)
  opts = tf.data.Options()
  opts.deterministic = True
  opts.autotune.enabled = True
  return ds.with_options(opts).prefetch(tf.data.AUTOTUNE)


def pad_to_batch(batch: dict, batch_size: int) -> dict:
  """Pads a final partial batch with all-padding rows (example_mask False) so the
  step sees its usual static shape."""
  n = batch["features"].shape[0]
  if n == batch_size:
    return batch
  out = {}
  for k, v in batch.items():
    fill = np.zeros((batch_size - n,) + v.shape[1:], v.dtype)
    if v.dtype == object:
      fill[...] = b""
    out[k] = np.concatenate([v, fill], 0)
  return out


def iterate(prepared_dir: str, split: str, cfg: ReaderConfig, **kw):
  """Numpy batches (partial eval batches padded to full size)."""
  ds = make_dataset(prepared_dir, split, cfg, **kw)
  for b in ds.as_numpy_iterator():
    yield pad_to_batch(b, cfg.batch_size)


class TFRecordPairs:
  """Distillation input over a prepared corpus: the `source` interface the trainer
  uses (`name`, `iterator(start_step)` of this process's numpy batches)."""

  def __init__(self, prepared_dir: str, split: str, global_batch: int, cfg: ReaderConfig,
               process_index: int = 0, process_count: int = 1):
    if global_batch % process_count:
      raise ValueError(f"global batch {global_batch} not divisible by {process_count} hosts")
    self.prepared_dir, self.split = prepared_dir, split
    self.cfg = dataclasses.replace(cfg, batch_size=global_batch // process_count, train=True)
    self.process_index, self.process_count = process_index, process_count
    self.name = f"tfrecord:{os.path.abspath(prepared_dir)}:{split}"

  def iterator(self, start_step: int = 0):
    tf = _tf()
    ds = make_dataset(self.prepared_dir, self.split, self.cfg,
                      process_index=self.process_index, process_count=self.process_count,
                      start_step=start_step)
    it = ds.as_numpy_iterator()
    while True:
      try:
        b = next(it)
      except StopIteration:
        return
      except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        raise IOError(f"{self.prepared_dir}: corrupt or truncated TFRecord data in split "
                      f"{self.split!r} ({e.message.splitlines()[0][:300]}); rebuild it "
                      "with python -m data_pipelines.prepare") from e
      b.pop("label")
      b.pop("example_mask")
      yield b
