"""The global batch plan: which examples form each step's batch, on every host.

Every process derives the same plan from the seed and the prepared examples'
frame counts alone:

  epoch e: a seeded permutation of each frame bucket's examples (smallest bucket
  first); full batches of `global_batch` examples are cut from each bucket, and
  a bucket's remainder carries over into the next larger bucket (padded a little
  more, never dropped); only the largest bucket's remainder waits for the next
  epoch's permutation. The batches are then shuffled.

So step k has one (frame bucket, global example ids) on every host: shapes agree
by construction, and each host reads only the rows its devices hold
(mced_jax.runtime.sharding.host_rows). A resumed run, on any number of hosts, gets the
same stream from any step: the plan is a pure function of (seed, step).

`PairLoader` reads a host's rows of each planned batch from a PreparedDataset;
grain runs the reads ahead of the step in a thread pool.
"""

from __future__ import annotations

import functools

import numpy as np

from data_pipelines import buckets as buckets_lib


class BatchPlan:

  def __init__(self, frames, buckets, global_batch: int, seed: int = 0):
    self.frames = np.asarray(frames)
    self.buckets = sorted(int(b) for b in buckets)
    self.global_batch = int(global_batch)
    self.seed = int(seed)
    self.bucket_of = buckets_lib.bucket_index(self.frames, self.buckets)
    self.steps_per_epoch = len(self._cut(np.random.default_rng(0)))
    if self.steps_per_epoch == 0:
      raise ValueError(f"{len(self.frames)} examples make no batch of {global_batch}: use a "
                       "smaller batch or more data")

  def _cut(self, rng) -> list[tuple[int, np.ndarray]]:
    out, carry = [], np.zeros(0, np.int64)
    for b, length in enumerate(self.buckets):
      pool = np.concatenate([carry, rng.permutation(np.flatnonzero(self.bucket_of == b))])
      n = len(pool) // self.global_batch
      out += [(length, pool[i * self.global_batch:(i + 1) * self.global_batch])
              for i in range(n)]
      carry = pool[n * self.global_batch:]
    return out

  @functools.lru_cache(maxsize=4)
  def epoch(self, e: int) -> list[tuple[int, np.ndarray]]:
    rng = np.random.default_rng([self.seed, e])
    batches = self._cut(rng)
    return [batches[i] for i in rng.permutation(len(batches))]

  def at(self, step: int) -> tuple[int, np.ndarray]:
    """(frame bucket, global example indices) of a step."""
    return self.epoch(step // self.steps_per_epoch)[step % self.steps_per_epoch]


def derangement(n: int, seed: int) -> np.ndarray:
  """A seeded permutation with no fixed point (one cycle through a shuffled order):
  `out[i]` is never i, so no example keeps its own transcript."""
  if n < 2:
    raise ValueError(f"shuffling transcripts needs at least 2 pairs, got {n}")
  order = np.random.default_rng(seed).permutation(n)
  out = np.empty(n, np.int64)
  out[order] = np.roll(order, -1)
  return out


class PairLoader:
  """This host's rows of every planned batch, as padded numpy arrays:

    features [n, T_bucket, 130] float32, frame_mask [n, T_bucket] bool,
    input_ids [n, max_tokens] int32, attention_mask [n, max_tokens] int32,
    count_truncated_frames / count_truncated_tokens: over the *global* batch.

  `text_of[i]` (optional) names the record whose transcript example i carries
  (the shuffled-target control); `labels` (optional, [N] int, -1 = none) adds a
  `label` row per example (supervised pretraining).
  """

  def __init__(self, dataset, records, plan: BatchPlan, rows, max_frames: int,
               max_tokens: int, sep_id: int = 102, num_threads: int = 4, prefetch: int = 4,
               text_of=None, labels=None):
    self.dataset, self.records, self.plan = dataset, list(records), plan
    self.text_of = None if text_of is None else np.asarray(text_of)
    self.labels = None if labels is None else np.asarray(labels, np.int32)
    self.rows = np.asarray(rows)
    self.max_frames, self.max_tokens, self.sep_id = max_frames, max_tokens, sep_id
    self.num_threads, self.prefetch = num_threads, prefetch
    self._frames = np.array([r["frames"] for r in self.records])
    self._tokens = np.array([r.get("num_tokens", 0) for r in self.records])
    if self.text_of is not None:
      self._tokens = self._tokens[self.text_of]

  def load(self, step: int) -> dict:
    bucket, ids = self.plan.at(step)
    mine = ids[self.rows]
    xs, toks = [], []
    for i in mine:
      ex = self.dataset.example(self.records[i])
      xs.append(ex.features[: self.max_frames])
      t = ex.input_ids if self.text_of is None else (
          self.dataset.example(self.records[self.text_of[i]]).input_ids)
      if len(t) > self.max_tokens:  # keep [SEP] last
        t = np.concatenate([t[: self.max_tokens - 1], [self.sep_id]]).astype(np.int32)
      toks.append(t)
    feats, fmask = buckets_lib.pad_frame_rows(xs, bucket, len(mine))
    ids_arr = np.zeros((len(mine), self.max_tokens), np.int32)
    for r, t in enumerate(toks):
      ids_arr[r, :len(t)] = t
    out = {"features": feats, "frame_mask": fmask, "input_ids": ids_arr,
           "attention_mask": (ids_arr > 0).astype(np.int32),
           "count_truncated_frames": int((self._frames[ids] > self.max_frames).sum()),
           "count_truncated_tokens": int((self._tokens[ids] > self.max_tokens).sum())}
    if self.labels is not None:
      out["label"] = self.labels[mine]
    return out

  def iterator(self, start_step: int = 0):
    """Batches from `start_step` on; closing the generator stops the reader threads."""
    import grain  # pylint: disable=import-outside-toplevel
    steps = grain.MapDataset.range(start_step, start_step + 10 ** 12).map(self.load)
    it = iter(steps.to_iter_dataset(grain.ReadOptions(
        num_threads=self.num_threads, prefetch_buffer_size=self.prefetch)))
    try:
      yield from it
    finally:
      it.close()
