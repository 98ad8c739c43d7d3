"""The tf.data reader of TFRecord shards under the global batch plan.

Each host builds, per bucket group of the plan, one tf.data pipeline over the
shards of the slots it holds (data_pipelines/batch_plan.py):

  slot j, group g:  wrap w = 0, 1, ...: the slot's shard files of the group's
                    buckets, in order -> decode -> keep the planned examples ->
                    shuffle (buffer, seeded by seed, j, g, w)
                    -> skip to the stream position of the first step
                    -> truncate, cast, pad to the group's length -> batch of b
  group g:          zip over the host's slots -> its rows of the global batch

Reading, decoding, shuffling, padding and batching run in tf.data's C++ threads
(`threads` of them), not under the GIL; Python only picks the batch of the step's
group. Streams are deterministic, so every host count gets the same rows. What
differs from the random-access reader: the order within a stream (a shuffle
buffer over the shards' order instead of a full permutation per wrap), and the
truncation counters, which count this host's rows only.
"""

from __future__ import annotations

import numpy as np

from data_pipelines import index as index_lib
from data_pipelines import tf_compat
from data_pipelines.batch_plan import HostReader

_BIG = 2 ** 62  # wraps of a stream: endless in practice


class TFRecordLoader(HostReader):
  """Same interface as batch_plan.PairLoader: `iterator(start_step)` yields this
  host's rows of every planned batch as numpy arrays."""

  def __init__(self, dataset, rows_of, plan, rows, max_frames: int, max_tokens: int,
               sep_id: int = 102, shuffle_buffer: int = 2048, threads: int = 0,
               text_of=None, labels=None):
    super().__init__(dataset, rows_of, plan, rows, max_frames, max_tokens, sep_id, text_of,
                     labels)
    self.shuffle_buffer, self.threads = shuffle_buffer, threads
    ix = dataset.index
    self.splits = [ix.splits[c] for c in sorted(set(ix.split[self.rows_of].tolist()))]
    # Within each slot's b rows, the offsets this host holds (all of them when the
    # mesh gives it whole slots).
    self._take = {j: sorted(int(r) % plan.per_slot for r in self.rows
                            if int(r) // plan.per_slot == j) for j in self.slots}
    # The joined batch holds slot by slot the offsets taken; the host feeds its rows
    # in `rows` order.
    where, k = {}, 0
    for j in self.slots:
      for o in self._take[j]:
        where[j * plan.per_slot + o] = k
        k += 1
    self._perm = np.array([where[int(r)] for r in self.rows], np.int64)

  # ---------------------------------------------------------------- tf.data
  def _files(self, slot: int, group: int) -> list[str]:
    out = []
    for split in self.splits:
      for b in self.plan.groups[group]:
        part = index_lib.part_name(split, b)
        if part in self.dataset.report.get("part_dirs", {}):
          paths = self.dataset.part_files(part)
          if slot < len(paths):
            out.append(paths[slot])
    return out

  def _stream(self, tf, slot: int, group: int, start: int):
    """Stream (slot, group) from example position `start`, decoded and padded."""
    plan, ds_ = self.plan, self.dataset
    files = self._files(slot, group)
    size = int(plan.stream_size[slot, group])
    spec = ds_.features_spec
    # index row -> selected (1) or not: selection and split choice by row.
    keep = np.zeros(len(ds_.index), np.bool_)
    keep[self.rows_of] = True
    keep_t, every_row = tf.constant(keep), bool(keep.all())
    seed = np.random.default_rng([plan.seed, slot, group]).integers(2 ** 31)

    def one_wrap(w):
      d = tf.data.TFRecordDataset(files)
      d = d.map(spec.deserialize_example, num_parallel_calls=tf.data.AUTOTUNE)
      if not every_row:
        d = d.filter(lambda ex: tf.gather(keep_t, ex["row"]))
      return d.shuffle(min(size, self.shuffle_buffer), seed=seed + w * 7919,
                       reshuffle_each_iteration=False)

    wrap0, offset = divmod(start, size)
    d = tf.data.Dataset.range(wrap0, _BIG).flat_map(one_wrap).skip(offset)
    return d.map(self._shape_fn(tf, plan.pad[group]), num_parallel_calls=tf.data.AUTOTUNE)

  def _shape_fn(self, tf, pad: int):
    """Decoded example -> fixed shapes (padded here, in the parallel map, so that
    batching is a plain parallel copy)."""
    max_frames, max_tokens, sep = min(self.max_frames, pad), self.max_tokens, self.sep_id
    ix = self.dataset.index
    other = None
    if self.text_of is not None:  # the shuffled-target control: another row's tokens
      row_to_other = np.full(len(ix), -1, np.int64)
      row_to_other[self.rows_of] = self.rows_of[self.text_of]
      other = tf.constant(row_to_other)
      ids, off = ix.all_tokens()
      tokens = tf.RaggedTensor.from_row_splits(tf.constant(ids), tf.constant(off))
    label_t = None
    if self.labels is not None:
      by_row = np.full(len(ix), -1, np.int32)
      by_row[self.rows_of] = self.labels
      label_t = tf.constant(by_row)

    def shape(ex):
      x = tf.cast(ex["acoustic"], tf.float32)
      n = tf.shape(x)[0]
      x = x[:max_frames]
      ids = ex["input_ids"] if other is None else tf.gather(tokens, tf.gather(other, ex["row"]))
      ids = tf.cast(ids, tf.int32)
      k = tf.shape(ids)[0]
      ids = tf.cond(k > max_tokens,
                    lambda: tf.concat([ids[:max_tokens - 1], tf.constant([sep], tf.int32)], 0),
                    lambda: ids)
      t, k_out = tf.shape(x)[0], tf.shape(ids)[0]
      x = tf.ensure_shape(tf.pad(x, [[0, pad - t], [0, 0]]), [pad, x.shape[-1]])
      ids = tf.ensure_shape(tf.pad(ids, [[0, max_tokens - k_out]]), [max_tokens])
      out = {"features": x, "frames": t, "input_ids": ids,
             "truncated_frames": tf.cast(n > self.max_frames, tf.int32),
             "truncated_tokens": tf.cast(k > max_tokens, tf.int32)}
      if label_t is not None:
        out["label"] = tf.gather(label_t, ex["row"])
      return out

    return shape

  def _group_pipeline(self, tf, group: int, start_step: int):
    plan, b = self.plan, self.plan.per_slot
    start = plan.start_of(start_step, group)
    # Each slot's stream ends in its own prefetch: a thread per stream, so the
    # streams' sequential parts (reading, shuffling) run side by side, not one
    # after another in the zip's thread.
    per_slot = [self._stream(tf, j, group, start).batch(
        b, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True).prefetch(2) for j in self.slots]
    d = tf.data.Dataset.zip(tuple(per_slot))
    take = [self._take[j] for j in self.slots]
    whole = all(len(t) == b for t in take)

    def join(*batches):
      parts = batches if whole else [
          {k: tf.gather(v, t) for k, v in bt.items()} for bt, t in zip(batches, take)]
      return {k: tf.concat([p[k] for p in parts], 0) for k in parts[0]}

    d = d.map(join, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(2)
    opts = tf.data.Options()
    opts.deterministic = True
    if self.threads:
      opts.threading.private_threadpool_size = self.threads
    return d.with_options(opts)

  def iterator(self, start_step: int = 0):
    tf = tf_compat.tensorflow()
    its = [iter(self._group_pipeline(tf, g, start_step).as_numpy_iterator())
           for g in range(len(self.plan.groups))]
    for step in range(start_step, start_step + 10 ** 12):
      g = self.plan.group_at(step)
      yield self._finish(next(its[g]), self.plan.pad[g])

  def _finish(self, raw: dict, pad: int) -> dict:
    identity = np.array_equal(self._perm, np.arange(len(self._perm)))
    pick = (lambda a: a) if identity else (lambda a: a[self._perm])
    frames = pick(raw["frames"])
    ids = pick(raw["input_ids"]).astype(np.int32)
    out = {"features": pick(raw["features"]),
           "frame_mask": np.arange(pad)[None, :] < frames[:, None],
           "input_ids": ids, "attention_mask": (ids > 0).astype(np.int32),
           "count_truncated_frames": int(raw["truncated_frames"].sum()),
           "count_truncated_tokens": int(raw["truncated_tokens"].sum())}
    if "label" in raw:
      out["label"] = pick(raw["label"]).astype(np.int32)
    return out
