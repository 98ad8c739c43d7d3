"""Length bucketing, written once: every consumer (distillation's batch plan,
fine-tuning, the teacher trainers, teacher inference, predict) pads a batch to one
of a few static lengths, so each jitted function compiles once per bucket.
No TensorFlow."""

from __future__ import annotations

import numpy as np


def bucket_for(n: int, buckets) -> int:
  """The smallest bucket holding n (the largest if none does)."""
  buckets = sorted(buckets)
  return next((b for b in buckets if b >= n), buckets[-1])


def frame_buckets(buckets, max_frames: int) -> list[int]:
  """Static frame counts up to max_frames; max_frames itself is always one."""
  out = sorted({int(b) for b in buckets if int(b) < max_frames} | {int(max_frames)})
  return out


def token_buckets(buckets, max_tokens: int) -> tuple[int, ...]:
  return tuple(sorted(int(b) for b in buckets if b < max_tokens)) + (int(max_tokens),)


def bucket_index(lengths, buckets) -> np.ndarray:
  """Index of the first bucket >= each length (the last for longer ones)."""
  buckets = np.asarray(sorted(buckets))
  return np.minimum(np.searchsorted(buckets, np.asarray(lengths)), len(buckets) - 1)


def open_ended(n: int, buckets) -> int:
  """A bucket length for n; beyond the largest bucket, multiples of it (predict:
  whole recordings, never truncated)."""
  buckets = sorted(buckets)
  if n <= buckets[-1]:
    return bucket_for(n, buckets)
  return -(-n // buckets[-1]) * buckets[-1]


def bucketed_batches(lengths, batch_size: int, buckets, seed: int | None = None):
  """Index batches grouped by length bucket; shuffled when seed is not None.

  Returns [(indices, bucket length)]: every batch of one bucket pads to that
  bucket's length. The last batch of a bucket may be short (`pad_token_rows`
  fills it with zero-weight rows).
  """
  buckets = sorted(buckets)
  which = bucket_index(lengths, buckets)
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


def pad_token_rows(ids, idx, length: int, batch_size: int, extra=None) -> dict:
  """[batch_size, length] ids + attention mask + example weight (0 for filler rows);
  `extra` arrays (e.g. labels) are gathered at idx and padded the same way."""
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


def pad_frame_rows(xs, frames: int, batch_size: int, feature_dim: int | None = None):
  """Features [batch_size, frames, F] (truncated/zero-padded) and frame mask."""
  dim = feature_dim if feature_dim is not None else xs[0].shape[1]
  feats = np.zeros((batch_size, frames, dim), np.float32)
  mask = np.zeros((batch_size, frames), bool)
  for i, x in enumerate(xs):
    n = min(len(x), frames)
    feats[i, :n], mask[i, :n] = x[:n], True
  return feats, mask
