"""The prepared-dataset API: the one reader of a `data_pipelines.prepare` output.

Distillation, fine-tuning, teacher inference and the benchmark all read prepared
data through `PreparedDataset`: the utterance table (`records.jsonl`: id, split,
label, speaker, session, transcript, frame and token counts), the feature
statistics, the class names, and random access to every example in the TFDS
ArrayRecord shards (features, WordPiece ids). Random access is what lets every
host of a multi-host job read exactly the examples of the global batch plan
(data_pipelines/batch_plan.py). No TensorFlow is imported.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

from data_pipelines.features import FEATURE_DIM
from data_pipelines.records import speaker_key
from mced_jax.runtime import fs

__all__ = ["FEATURE_DIM", "PreparedDataset", "Example"]


@dataclasses.dataclass
class Example:
  utt_id: str
  features: np.ndarray  # [T, 130] float32 (standardised unless raw was asked for)
  input_ids: np.ndarray  # [S] int32, [CLS] ... [SEP]


def _tfds_dir(path: str) -> str:
  root = fs.join(path, "tfds", "mced_pairs")
  if not fs.isdir(root):
    raise FileNotFoundError(f"{path}: no prepared dataset (expected {root}); run "
                            "python -m data_pipelines.prepare first")
  names = [n for n in fs.listdir(root) if not n.startswith(".") and "incomplete" not in n]
  if len(names) != 1:
    raise ValueError(f"{root}: expected one dataset, found {names}")
  versions = [v for v in fs.listdir(fs.join(root, names[0])) if not v.startswith("incomplete")]
  if not versions:
    raise FileNotFoundError(f"{root}/{names[0]}: no finished version")
  out = fs.join(root, names[0], sorted(versions)[-1])
  if not any(".array_record" in n for n in fs.listdir(out)):
    raise ValueError(f"{out}: prepared by an older mced_jax (TFRecord shards). Re-run "
                     "python -m data_pipelines.prepare into a new directory; the cached "
                     "features are reused if you copy its features/ folder over.")
  return out


class PreparedDataset:
  """A prepared corpus: records, classes, statistics and random access."""

  def __init__(self, path: str):
    self.path = fs.abspath(path)
    rec_path = fs.join(self.path, "records.jsonl")
    if not fs.exists(rec_path):
      raise FileNotFoundError(f"{self.path}: no records.jsonl; prepare the corpus with "
                              "python -m data_pipelines.prepare (or the `data` stage) first")
    import json  # pylint: disable=import-outside-toplevel
    self.records = [json.loads(l) for l in fs.read_text(rec_path).splitlines() if l.strip()]
    index = {}
    for r in self.records:
      index.setdefault(r["split"], [])
      r["index"] = len(index[r["split"]])  # position in its split's shards
      index[r["split"]].append(r["utt_id"])
    self.by_id = {r["utt_id"]: r for r in self.records}
    report_path = fs.join(self.path, "report.json")
    self.report = fs.read_json(report_path) if fs.exists(report_path) else {}
    stats = fs.read_json(fs.join(self.path, "feature_stats.json"))
    self.mean = np.asarray(stats["mean"], np.float32)
    self.std = np.asarray(stats["std"], np.float32)
    self.stored = stats.get("stored", "raw")  # "normalized" (float16) or "raw"
    # "global" (train-split statistics) or "speaker" (each speaker its own).
    self.normalize = stats.get("normalize", "global")
    self.speaker_stats = {k: (np.asarray(v["mean"], np.float32), np.asarray(v["std"], np.float32))
                          for k, v in (stats.get("speakers") or {}).items()}

  def stats_for(self, record: dict) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) that standardise this record: its speaker's, or the global ones."""
    if self.normalize != "speaker":
      return self.mean, self.std
    return self.speaker_stats[speaker_key(record.get("speaker", ""), record["utt_id"])]

  @property
  def name(self) -> str:
    return self.report.get("name") or fs.basename(self.path)

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
    parts = [p.strip() for p in split.split("+") if p.strip()]
    have = sorted({r["split"] for r in self.records})
    bad = [p for p in parts if p not in have]
    if bad:
      raise ValueError(f"{self.path}: no split {bad}; it has {have}")
    return [r for r in self.records if r["split"] in parts]

  @functools.cached_property
  def _tfds_dir(self) -> str:
    return _tfds_dir(self.path)

  @functools.lru_cache(maxsize=None)
  def _source(self, split: str):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    return tfds.builder_from_directory(self._tfds_dir).as_data_source(split)

  def example(self, record: dict, normalized: bool = True) -> Example:
    try:
      ex = self._source(record["split"])[record["index"]]
    except (FileNotFoundError, ValueError):
      raise
    except Exception as e:  # noqa: BLE001 - array_record raises plain errors on bad data
      raise IOError(f"{self.path}: corrupt or truncated shard data reading "
                    f"{record.get('utt_id')} ({type(e).__name__}: {str(e)[:200]}); prepare "
                    "the corpus again") from e
    uid = ex["utt_id"].decode() if isinstance(ex["utt_id"], bytes) else str(ex["utt_id"])
    if uid != record["utt_id"]:
      raise IOError(f"{self.path}: shard order does not match records.jsonl ({uid} at the "
                    f"place of {record['utt_id']}); prepare the corpus again")
    x = np.asarray(ex["acoustic"], np.float32)
    if x.ndim != 2 or x.shape[1] != FEATURE_DIM:
      raise ValueError(f"{self.path}: {uid} has features of shape {x.shape}, expected "
                       f"[T, {FEATURE_DIM}]")
    if normalized != (self.stored == "normalized"):
      mean, std = self.stats_for(record)
      x = (x - mean) / std if normalized else x * std + mean
    return Example(uid, x, np.asarray(ex["input_ids"], np.int32))

  def features(self, records, normalized: bool = True) -> dict:
    """utt_id -> features for many records (small corpora: fine-tuning)."""
    return {r["utt_id"]: self.example(r, normalized).features for r in records}


def cpu_count() -> int:
  return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else (os.cpu_count() or 1))
