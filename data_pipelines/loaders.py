"""The loader of a distillation input: the global batch plan read by tf.data
(TFRecord shards) or by random access (ArrayRecord, or TFRecord parts in memory)."""

from __future__ import annotations

import numpy as np

from data_pipelines.batch_plan import BatchPlan, PairLoader


def make_loader(dataset, rows_of, global_batch: int, rows, *, seed: int, max_frames: int,
                max_tokens: int, reader: str = "auto", threads: int = 4,
                shuffle_buffer: int = 2048, text_of=None, labels=None):
  """(plan, loader, reader name) for index rows `rows_of` of a PreparedDataset:
  tf.data for TFRecords where it can open them (reader 'auto' or 'tf_data'),
  random access otherwise ('random_access', or ArrayRecord)."""
  from data_pipelines import files  # pylint: disable=import-outside-toplevel
  if reader not in ("auto", "tf_data", "random_access"):
    raise ValueError(f"data.reader={reader!r}; known: auto, tf_data, random_access")
  ix = dataset.index
  rows_of = np.asarray(rows_of, np.int64)
  plan = BatchPlan(ix.shard[rows_of], ix.bucket[rows_of], ix.buckets, ix.num_shards,
                   global_batch, seed, max_frames=max_frames)
  use_tf = (dataset.format == "tfrecord" and reader != "random_access"
            and files.tf_data_readable(dataset.path))
  if reader == "tf_data" and not use_tf:
    raise ValueError(f"data.reader='tf_data' needs TFRecord shards where tf.data can open "
                     f"them (local, gs://, ram://); {dataset.path} holds {dataset.format}")
  if use_tf:
    from data_pipelines.tfrecord_reader import TFRecordLoader  # pylint: disable=import-outside-toplevel
    return plan, TFRecordLoader(dataset, rows_of, plan, rows, max_frames, max_tokens,
                                shuffle_buffer=shuffle_buffer, threads=threads,
                                text_of=text_of, labels=labels), "tf.data"
  return plan, PairLoader(dataset, rows_of, plan, rows, max_frames, max_tokens,
                          num_threads=threads, text_of=text_of, labels=labels), "random-access"
