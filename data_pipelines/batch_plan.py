"""The global batch plan: which examples form each step's batch, on every host.

A prepared dataset is written in *parts* (one per split and frame bucket), each
cut into the same number of shards; shard j of every part is *slot* j. A global
batch of B rows is the slots side by side: rows [j*b, (j+1)*b) come from slot j
(b = B / slots). Each slot serves one *stream* per bucket group, an endless
sequence of its examples of those buckets, reshuffled every time it wraps.

Every process derives the same plan from the seed and the index alone:

  * bucket groups: consecutive frame buckets merged until every slot has >= b
    examples in the group (a group pads to its largest bucket);
  * the schedule: per epoch, group g runs s_g = min over slots of its examples // b
    steps, in a seeded random order (epoch e uses the seed and e);
  * step k uses group g_k; slot j's rows at step k are the next b examples of
    stream (j, g_k): its position is b x (steps of g_k before k), a pure function
    of k.

So step k has one bucket on every host (shapes agree by construction), a host
holding rows of slots J reads only the shards of J (with a mesh whose hosts hold
whole slots, 1/hosts of the bytes), and a resumed run on any number of hosts gets
the same stream from any step. The readers differ only in the order within a
stream: `PairLoader` (random access: ArrayRecord, or TFRecord parts in memory)
takes a seeded permutation per wrap; the tf.data reader
(data_pipelines/tfrecord_reader.py) reads the shard files in order through a
seeded shuffle buffer.
"""

from __future__ import annotations

import functools

import numpy as np

from data_pipelines import buckets as buckets_lib


def derangement(n: int, seed: int) -> np.ndarray:
  """A seeded permutation with no fixed point (one cycle through a shuffled order):
  `out[i]` is never i, so no example keeps its own transcript."""
  if n < 2:
    raise ValueError(f"shuffling transcripts needs at least 2 pairs, got {n}")
  order = np.random.default_rng(seed).permutation(n)
  out = np.empty(n, np.int64)
  out[order] = np.roll(order, -1)
  return out


class BatchPlan:
  """The plan over `n` examples: `slot[i]` and `bucket[i]` of each (from the index),
  `buckets` the physical bucket lengths, `num_slots` the shards per part."""

  def __init__(self, slot, bucket, buckets, num_slots: int, global_batch: int,
               seed: int = 0, max_frames: int | None = None):
    self.slot = np.asarray(slot, np.int64)
    self.bucket = np.asarray(bucket, np.int64)
    self.buckets = [int(b) for b in buckets]
    self.num_slots, self.global_batch, self.seed = int(num_slots), int(global_batch), int(seed)
    if self.global_batch % self.num_slots:
      raise ValueError(f"the global batch ({global_batch}) must be a multiple of the dataset's "
                       f"shards per part ({num_slots}): each step takes the same number of "
                       "examples from every shard (prepare with data.num_shards dividing it)")
    self.per_slot = self.global_batch // self.num_slots
    counts = np.zeros((self.num_slots, len(self.buckets)), np.int64)
    np.add.at(counts, (self.slot, self.bucket), 1)
    self.groups = self._groups(counts)
    self.group_of_bucket = np.zeros(len(self.buckets), np.int64)
    for g, members in enumerate(self.groups):
      self.group_of_bucket[members] = g
    last = len(self.buckets) - 1
    self.pad = [int(max_frames) if (last in g and max_frames) else
                min(self.buckets[max(g)], int(max_frames or self.buckets[max(g)]))
                for g in self.groups]
    group = self.group_of_bucket[self.bucket]
    # Stream (j, g): its examples in index order (shard file order within a part).
    order = np.lexsort((np.arange(len(self.slot)), group, self.slot))
    keys = self.slot[order] * len(self.groups) + group[order]
    starts = np.searchsorted(keys, np.arange(self.num_slots * len(self.groups) + 1))
    self._order, self._starts = order, starts
    self.stream_size = np.diff(starts).reshape(self.num_slots, len(self.groups))
    self.steps_of_group = self.stream_size.min(0) // self.per_slot
    self.steps_per_epoch = int(self.steps_of_group.sum())

  def _groups(self, counts) -> list[list[int]]:
    groups, cur = [], []
    for b in range(len(self.buckets)):
      cur.append(b)
      if counts[:, cur].sum(1).min() >= self.per_slot:
        groups.append(cur)
        cur = []
    if cur:
      if groups:
        groups[-1] = groups[-1] + cur
      else:
        groups = [cur]
    have = counts.sum(1)
    if have.min() < self.per_slot:
      raise ValueError(
          f"{len(self.slot)} examples in {self.num_slots} shards make no batch of "
          f"{self.global_batch} ({self.per_slot} per shard; the smallest shard has "
          f"{int(have.min())}): use a smaller batch, fewer shards (data.num_shards) or more data")
    return groups

  def members(self, slot: int, group: int) -> np.ndarray:
    """Example ids of stream (slot, group), in index order."""
    k = slot * len(self.groups) + group
    return self._order[self._starts[k]:self._starts[k + 1]]

  @functools.lru_cache(maxsize=4)
  def _schedule(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(group of each step of an epoch, steps of each group before it)."""
    rng = np.random.default_rng([self.seed, epoch])
    seq = rng.permutation(np.repeat(np.arange(len(self.groups)), self.steps_of_group))
    onehot = np.zeros((len(seq), len(self.groups)), np.int64)
    onehot[np.arange(len(seq)), seq] = 1
    before = np.cumsum(onehot, 0) - onehot
    return seq, before

  def group_at(self, step: int) -> int:
    e, k = divmod(step, self.steps_per_epoch)
    return int(self._schedule(e)[0][k])

  def start_of(self, step: int, group: int) -> int:
    """Position in every slot's stream of `group` where `step` would read: b x the
    steps of that group before `step`."""
    e, k = divmod(step, self.steps_per_epoch)
    before = self._schedule(e)[1]
    return int((e * self.steps_of_group[group] + before[k, group]) * self.per_slot)

  def position(self, step: int) -> tuple[int, int]:
    """(group of the step, position of its first example in every slot's stream)."""
    g = self.group_at(step)
    return g, self.start_of(step, g)

  @functools.lru_cache(maxsize=64)
  def _wrap(self, slot: int, group: int, wrap: int) -> np.ndarray:
    members = self.members(slot, group)
    return members[np.random.default_rng([self.seed, slot, group, wrap]).permutation(len(members))]

  def stream(self, slot: int, group: int, start: int, n: int) -> np.ndarray:
    """Example ids at positions start..start+n-1 of stream (slot, group) (random
    access order: a seeded permutation per wrap)."""
    size = int(self.stream_size[slot, group])
    out = np.empty(n, np.int64)
    for i in range(n):
      w, o = divmod(start + i, size)
      out[i] = self._wrap(slot, group, w)[o]
    return out

  def at(self, step: int, slots=None) -> tuple[int, np.ndarray]:
    """(pad length, example ids of the global batch's rows), slot by slot; `slots`
    limits it to those slots (the others' rows are -1)."""
    g, start = self.position(step)
    ids = np.full(self.global_batch, -1, np.int64)
    for j in (range(self.num_slots) if slots is None else slots):
      ids[j * self.per_slot:(j + 1) * self.per_slot] = self.stream(j, g, start, self.per_slot)
    return self.pad[g], ids

  def slots_of(self, rows) -> list[int]:
    """The slots whose rows a host holds (it reads only their shards)."""
    return sorted({int(r) // self.per_slot for r in np.asarray(rows)})


class HostReader:
  """What both loaders share: this host's rows of the plan's batches, the optional
  controls (`text_of`: example i carries example text_of[i]'s transcript;
  `labels`: a label row per example, -1 for none), padding and truncation limits."""

  def __init__(self, dataset, rows_of, plan: BatchPlan, rows, max_frames: int,
               max_tokens: int, sep_id: int = 102, text_of=None, labels=None):
    self.dataset, self.plan = dataset, plan
    self.rows_of = np.asarray(rows_of, np.int64)
    self.rows = np.asarray(rows)
    self.slots = plan.slots_of(self.rows)
    self.max_frames, self.max_tokens, self.sep_id = max_frames, max_tokens, sep_id
    self.text_of = None if text_of is None else np.asarray(text_of)
    self.labels = None if labels is None else np.asarray(labels, np.int32)


class PairLoader(HostReader):
  """This host's rows of every planned batch, read by random access (ArrayRecord,
  or TFRecord parts held in memory), as padded numpy arrays:

    features [n, T_pad, 130] float32, frame_mask [n, T_pad] bool,
    input_ids [n, max_tokens] int32, attention_mask [n, max_tokens] int32,
    count_truncated_frames / count_truncated_tokens: over the *global* batch.

  `rows_of` maps the plan's example ids to index rows. `text_of[i]` (optional)
  names the example whose transcript example i carries (the shuffled-target
  control); `labels` (optional, [n] int, -1 = none) adds a `label` row per example
  (supervised pretraining).
  """

  def __init__(self, dataset, rows_of, plan: BatchPlan, rows, max_frames: int,
               max_tokens: int, sep_id: int = 102, num_threads: int = 4, prefetch: int = 4,
               text_of=None, labels=None):
    super().__init__(dataset, rows_of, plan, rows, max_frames, max_tokens, sep_id, text_of,
                     labels)
    self.num_threads, self.prefetch = num_threads, prefetch
    ix = dataset.index
    self._frames = ix.frames[self.rows_of]
    tok_rows = self.rows_of if self.text_of is None else self.rows_of[self.text_of]
    self._tokens = ix.num_tokens[tok_rows].astype(np.int64)

  def load(self, step: int) -> dict:
    pad, ids = self.plan.at(step, self.slots)
    mine = ids[self.rows]
    xs, toks = [], []
    for i in mine:
      ex = self.dataset.example(int(self.rows_of[i]))
      xs.append(ex.features[: self.max_frames])
      t = ex.input_ids if self.text_of is None else self.dataset.index.tokens(
          int(self.rows_of[self.text_of[i]]))
      if len(t) > self.max_tokens:  # keep [SEP] last
        t = np.concatenate([t[: self.max_tokens - 1], [self.sep_id]]).astype(np.int32)
      toks.append(t)
    feats, fmask = buckets_lib.pad_frame_rows(xs, pad, len(mine))
    ids_arr = np.zeros((len(mine), self.max_tokens), np.int32)
    for r, t in enumerate(toks):
      ids_arr[r, :len(t)] = t
    _, everyone = self.plan.at(step) if len(self.slots) < self.plan.num_slots else (pad, ids)
    out = {"features": feats, "frame_mask": fmask, "input_ids": ids_arr,
           "attention_mask": (ids_arr > 0).astype(np.int32),
           "count_truncated_frames": int((self._frames[everyone] > self.max_frames).sum()),
           "count_truncated_tokens": int((self._tokens[everyone] > self.max_tokens).sum())}
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

