"""The prepared-dataset API: the one reader of a `data_pipelines.prepare` output.

Distillation, fine-tuning, teacher inference and the benchmark all open prepared
data as a `PreparedDataset`: the columnar index (`index.npz`, what the batch plan
needs), the utterance table (`records.jsonl`: id, split, label, speaker, ...,
read only when asked for), the feature statistics, the class names, and the
examples themselves:

  * ArrayRecord shards (local disks): random access by (part, position);
  * TFRecord shards (local, gs://, ram:// or any URL the filesystem layer reads):
    streamed by tf.data (data_pipelines/tfrecord_reader.py), or, for small
    corpora and URLs tf.data cannot open, one part at a time read whole into
    memory by a plain-Python record reader.

ArrayRecord cannot be opened at a URL (the released reader reads local files):
such a dataset is refused here, at start-up, with what to do instead.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import struct
import threading

import numpy as np

from data_pipelines import files
from data_pipelines import index as index_lib
from data_pipelines import tf_compat
from data_pipelines.features import FEATURE_DIM
from data_pipelines.records import speaker_key
from mced_jax.runtime import fs

__all__ = ["FEATURE_DIM", "PreparedDataset", "Example"]


@dataclasses.dataclass
class Example:
  utt_id: str
  features: np.ndarray  # [T, 130] float32 (standardised unless raw was asked for)
  input_ids: np.ndarray  # [S] int32, [CLS] ... [SEP]
  row: int = -1  # row in records.jsonl / the index


def tfrecord_payloads(data: bytes):
  """The records of a TFRecord file's bytes (length, crc, payload, crc)."""
  pos, n = 0, len(data)
  while pos < n:
    if pos + 12 > n:
      raise IOError("truncated TFRecord file (a record header is cut off)")
    (length,) = struct.unpack_from("<Q", data, pos)
    start = pos + 12
    if start + length + 4 > n:
      raise IOError("truncated TFRecord file (a record is cut off)")
    yield data[start:start + length]
    pos = start + length + 4


class PreparedDataset:
  """A prepared corpus: index, records, classes, statistics and its examples."""

  def __init__(self, path: str):
    self.path = fs.abspath(path)
    if not files.exists(fs.join(self.path, "records.jsonl")):
      raise FileNotFoundError(f"{self.path}: no records.jsonl; prepare the corpus with "
                              "python -m data_pipelines.prepare (or the `data` stage) first")
    if not files.exists(fs.join(self.path, index_lib.FILE)):
      raise ValueError(f"{self.path}: prepared by an older mced_jax (no {index_lib.FILE}). "
                       "Re-run python -m data_pipelines.prepare into a new directory; the "
                       "cached features are reused if you copy its features/ folder over.")
    report_path = fs.join(self.path, "report.json")
    self.report = files.read_json(report_path) if files.exists(report_path) else {}
    self.index = index_lib.Index.from_bytes(files.read_bytes(fs.join(self.path, index_lib.FILE)))
    self.index.load_tokens = lambda: index_lib.Index.tokens_from_bytes(
        files.read_bytes(fs.join(self.path, index_lib.TOKENS)))
    self.format = self.index.file_format
    if self.format == "array_record" and fs.is_url(self.path):
      raise ValueError(
          f"{self.path}: ArrayRecord shards cannot be opened at a URL (the ArrayRecord "
          "reader reads local files only). Prepare the data with --config.data.format="
          "tfrecord (tf.data streams TFRecords from gs://), or mount the bucket as a local "
          "directory (e.g. gcsfuse) and point data.path at the mount.")
    stats = files.read_json(fs.join(self.path, "feature_stats.json"))
    self.mean = np.asarray(stats["mean"], np.float32)
    self.std = np.asarray(stats["std"], np.float32)
    self.stored = stats.get("stored", "raw")  # "normalized" (float16) or "raw"
    # "global" (train-split statistics) or "speaker" (each speaker its own).
    self.normalize = stats.get("normalize", "global")
    self.speaker_stats = {k: (np.asarray(v["mean"], np.float32), np.asarray(v["std"], np.float32))
                          for k, v in (stats.get("speakers") or {}).items()}
    self._parts: dict = {}
    self._open_lock = threading.Lock()

  @functools.cached_property
  def records(self) -> list[dict]:
    """records.jsonl as dicts (row i = index row i); read on first use."""
    import json  # pylint: disable=import-outside-toplevel
    text = files.read_text(fs.join(self.path, "records.jsonl"))
    out = [json.loads(l) for l in text.splitlines() if l.strip()]
    for i, r in enumerate(out):
      r["row"] = i
    if len(out) != len(self.index):
      raise IOError(f"{self.path}: records.jsonl has {len(out)} rows, the index "
                    f"{len(self.index)}; prepare the corpus again")
    return out

  @functools.cached_property
  def by_id(self) -> dict:
    return {r["utt_id"]: r for r in self.records}

  def stats_for(self, record: dict) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) that standardise this record: its speaker's, or the global ones."""
    if self.normalize != "speaker":
      return self.mean, self.std
    return self.speaker_stats[speaker_key(record.get("speaker", ""), record["utt_id"])]

  @property
  def name(self) -> str:
    return self.report.get("name") or fs.basename(self.path)

  @property
  def frame_buckets(self) -> tuple:
    return self.index.buckets

  def classes(self, requested=()) -> tuple:
    """Class names: `requested`, else the prepared label set, else the labels found."""
    if requested:
      return tuple(requested)
    labels = self.report.get("labels")
    if labels:
      return tuple(labels)
    return tuple(sorted({r["label"] for r in self.records if r.get("label")}))

  def select(self, split: str = "train") -> list[dict]:
    """Records of one split or several ("train+validation+test")."""
    try:
      rows = self.index.rows_of(split)
    except ValueError as e:
      raise ValueError(f"{self.path}: {e}") from None
    recs = self.records
    return [recs[i] for i in rows]

  # ---------------------------------------------------------------- shards
  def part_dir(self, part: str) -> str:
    rel = (self.report.get("part_dirs") or {}).get(part)
    if rel is None:
      raise ValueError(f"{self.path}: no part {part!r} (parts: {sorted(self.report.get('part_dirs', {}))})")
    return fs.join(self.path, *rel.split(os.sep))

  def part_files(self, part: str) -> list[str]:
    """The shard files of one part, in shard order."""
    d = self.part_dir(part)
    ext = "tfrecord" if self.format == "tfrecord" else "array_record"
    prefix = f"mced_pairs-{part}.{ext}-"
    names = sorted(n for n in files.listdir(d) if n.startswith(prefix))
    want = len(self.report["shard_lengths"][part])
    if len(names) != want:
      raise IOError(f"{d}: found {len(names)} shard files of part {part}, expected {want}; "
                    "the dataset is incomplete: prepare it again")
    return [fs.join(d, n) for n in names]

  @functools.cached_property
  def features_spec(self):
    from data_pipelines.builders.pairs import features_dict  # pylint: disable=import-outside-toplevel
    opts = self.report.get("signature", {}).get("options", {})
    # datasets prepared before the option hold number lists ("none")
    return features_dict(tuple(opts.get("label_names") or ()),
                         opts.get("feature_dtype", "float16"),
                         opts.get("tensor_encoding", "none"))

  def _opened(self, part: str, open_part):
    """The reader of `part`, opened by one thread while the others wait.

    The loader's threads ask for parts concurrently. Opening imports
    tensorflow_datasets, and its lazy imports deadlock when two threads import at
    once on Python 3.11: one thread holds a module's import lock and waits for
    `functools.cached_property`'s lock, which another holds while it waits for that
    import (seen as a multi-host distillation that never finished its first step)."""
    reader = self._parts.get(part)
    if reader is None:
      with self._open_lock:
        reader = self._parts.get(part)
        if reader is None:
          reader = self._parts[part] = open_part(part)
    return reader

  def _array_record(self, part: str):
    return self._opened(part, lambda p: tf_compat.tfds().builder_from_directory(
        self.part_dir(p)).as_data_source(p))

  def _tfrecord_part(self, part: str) -> list:
    """A TFRecord part read whole (small corpora; URLs tf.data cannot open)."""

    def read(p):
      return [self.features_spec.deserialize_example_np(raw)
              for path in self.part_files(p) for raw in tfrecord_payloads(files.read_bytes(path))]

    return self._opened(part, read)

  def raw_example(self, part: str, position: int) -> dict:
    try:
      if self.format == "array_record":
        return self._array_record(part)[position]
      return self._tfrecord_part(part)[position]
    except (FileNotFoundError, ValueError):
      raise
    except Exception as e:  # noqa: BLE001 - the shard readers raise plain errors on bad data
      raise IOError(f"{self.path}: corrupt or truncated shard data reading {part}[{position}] "
                    f"({type(e).__name__}: {str(e)[:200]}); prepare the corpus again") from e

  def example(self, record, normalized: bool = True) -> Example:
    """An example by its record (dict) or index row (int)."""
    row = record if isinstance(record, (int, np.integer)) else record.get("row")
    if row is None:  # a record dict built elsewhere: find its row by id
      row = self.by_id[record["utt_id"]]["row"]
    row = int(row)
    ix = self.index
    ex = self.raw_example(ix.part_of(row), int(ix.position[row]))
    if int(ex["row"]) != row:
      raise IOError(f"{self.path}: shard order does not match the index (row {int(ex['row'])} "
                    f"at the place of row {row}); prepare the corpus again")
    uid = ex["utt_id"].decode() if isinstance(ex["utt_id"], bytes) else str(ex["utt_id"])
    x = np.asarray(ex["acoustic"], np.float32)
    if x.ndim != 2 or x.shape[1] != FEATURE_DIM:
      raise ValueError(f"{self.path}: {uid} has features of shape {x.shape}, expected "
                       f"[T, {FEATURE_DIM}]")
    if normalized != (self.stored == "normalized"):
      mean, std = self.stats_for(self.records[row])
      x = (x - mean) / std if normalized else x * std + mean
    return Example(uid, x, np.asarray(ex["input_ids"], np.int32), row)

  def features(self, records, normalized: bool = True) -> dict:
    """utt_id -> features for many records (small corpora: fine-tuning)."""
    return {r["utt_id"]: self.example(r, normalized).features for r in records}

  def fingerprint(self) -> str:
    """What this host reads, hashed: the index, the written shard lengths, and the
    sizes of the shard files where a stat is cheap (local disks, TensorFlow's URLs)."""
    sizes = {}
    if not fs.is_url(self.path) or fs.scheme(self.path) in files.TF_DATA:
      for part in self.report.get("part_dirs", {}):
        sizes[part] = [files.size(p) for p in self.part_files(part)]
    return self.index.fingerprint({"lengths": self.report.get("shard_lengths"),
                                   "sizes": sizes})


def cpu_count() -> int:
  return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else (os.cpu_count() or 1))
