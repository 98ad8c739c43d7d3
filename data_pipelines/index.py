"""The columnar index of a prepared dataset: what every host reads to plan.

One row per kept utterance, in `records.jsonl` order, as numpy columns (no
Python dicts, so a 10 M-pair index is ~200 MB and loads in seconds):

  frames      int32   IS16 frames (100 per second)
  num_tokens  int16   WordPiece ids, [CLS] ... [SEP]
  split       int8    code into `splits` (train, validation, test, ...)
  bucket      int8    physical frame bucket: index into `buckets`
  shard       int32   shard (file) of its (split, bucket) part: the *slot*
  position    int64   position within its (split, bucket) part, over its shards
  label       int16   code into `labels`, -1 when unlabelled

and, in a file of their own (`tokens.npz`, loaded only when asked for), the token
ids themselves, ragged (`token_ids` concatenated, `token_offsets`), so teacher
inference over the pairs and the shuffled-text control never read a feature.
Shard files are named by `part_name(split, bucket)`.

`fingerprint(dataset_info)` hashes the index and the written shards' lengths and
sizes: two hosts that read the same dataset get the same value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json

import numpy as np

COLUMNS = ("frames", "num_tokens", "split", "bucket", "shard", "position", "label")
DTYPES = {"frames": np.int32, "num_tokens": np.int16, "split": np.int8, "bucket": np.int8,
          "shard": np.int32, "position": np.int64, "label": np.int16}
FILE = "index.npz"
TOKENS = "tokens.npz"


def part_name(split: str, bucket: int) -> str:
  """The TFDS split that holds one frame bucket of a split: 'train-b1'."""
  return f"{split}-b{bucket}"


def order_key(seed: int, utt_id: str) -> int:
  """The position of an example within its part is the rank of this 64-bit hash:
  a seeded pseudo-random order, the same for any writer (local or Beam)."""
  return int.from_bytes(hashlib.blake2b(f"{seed}:{utt_id}".encode(), digest_size=8).digest(),
                        "big")


@dataclasses.dataclass
class Index:
  frames: np.ndarray
  num_tokens: np.ndarray
  split: np.ndarray
  bucket: np.ndarray
  shard: np.ndarray
  position: np.ndarray
  label: np.ndarray
  token_ids: np.ndarray | None  # int32, every example's ids concatenated (lazy)
  token_offsets: np.ndarray | None  # int64 [N + 1]
  splits: tuple  # names
  buckets: tuple  # frame lengths of the physical buckets (the last = max_frames)
  labels: tuple  # class names
  num_shards: int  # shards per (split, bucket) part, at most
  file_format: str  # "tfrecord" | "array_record"

  def __len__(self) -> int:
    return len(self.frames)

  load_tokens = None  # () -> (token_ids, token_offsets), set by the dataset

  def _tokens(self):
    if self.token_ids is None:
      if self.load_tokens is None:
        raise ValueError("this index has no token ids loaded")
      self.token_ids, self.token_offsets = self.load_tokens()
    return self.token_ids, self.token_offsets

  def tokens(self, i: int) -> np.ndarray:
    ids, off = self._tokens()
    return ids[off[i]:off[i + 1]]

  def all_tokens(self) -> tuple[np.ndarray, np.ndarray]:
    return self._tokens()

  def part_of(self, row: int) -> str:
    """The shard part (split and bucket) that holds `row`."""
    return part_name(self.splits[self.split[row]], int(self.bucket[row]))

  def rows_of(self, split: str) -> np.ndarray:
    """Row numbers of one split, or of several ('train+validation')."""
    want = [p.strip() for p in split.split("+") if p.strip()]
    bad = [p for p in want if p not in self.splits]
    if bad:
      raise ValueError(f"no split {bad}; the dataset has {list(self.splits)}")
    codes = [self.splits.index(p) for p in want]
    return np.flatnonzero(np.isin(self.split, codes))

  def to_bytes(self) -> bytes:
    """The columns and the metadata (index.npz; the tokens go to `tokens_bytes`)."""
    buf = io.BytesIO()
    meta = json.dumps({"splits": list(self.splits), "buckets": list(self.buckets),
                       "labels": list(self.labels), "num_shards": self.num_shards,
                       "file_format": self.file_format})
    np.savez(buf, **{c: getattr(self, c) for c in COLUMNS},
             meta=np.frombuffer(meta.encode(), np.uint8))
    return buf.getvalue()

  def tokens_bytes(self) -> bytes:
    buf = io.BytesIO()
    ids, off = self._tokens()
    np.savez(buf, token_ids=ids, token_offsets=off)
    return buf.getvalue()

  @staticmethod
  def tokens_from_bytes(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    z = np.load(io.BytesIO(data))
    return z["token_ids"], z["token_offsets"]

  @classmethod
  def from_bytes(cls, data: bytes) -> "Index":
    z = np.load(io.BytesIO(data))
    meta = json.loads(z["meta"].tobytes().decode())
    return cls(**{c: z[c] for c in COLUMNS}, token_ids=None, token_offsets=None,
               splits=tuple(meta["splits"]), buckets=tuple(meta["buckets"]),
               labels=tuple(meta["labels"]), num_shards=int(meta["num_shards"]),
               file_format=meta["file_format"])

  def fingerprint(self, shard_info: dict | None = None) -> str:
    """A hash of the index columns and the written shards (lengths and bytes per
    part), as hex."""
    h = hashlib.sha256()
    for c in COLUMNS:
      h.update(np.ascontiguousarray(getattr(self, c)).tobytes())
    h.update(repr((self.splits, self.buckets, self.labels, self.num_shards,
                   self.file_format)).encode())
    h.update(repr(sorted((shard_info or {}).items())).encode())
    return h.hexdigest()[:16]


def build(frames, tokens, split_names, label_names, labels, buckets, num_shards: int,
          file_format: str, keys) -> tuple["Index", dict]:
  """The index of examples in records order, and each part's examples in write
  order: {part name: row numbers}. `keys` (order_key per row) fix the order within
  a part; shard ids are filled in from the written shard lengths (`assign_shards`)."""
  frames = np.asarray(frames, np.int32)
  bucket = np.minimum(np.searchsorted(np.asarray(buckets), frames), len(buckets) - 1)
  splits = tuple(dict.fromkeys(split_names))
  split = np.array([splits.index(s) for s in split_names], np.int8)
  # Unlabelled-pair corpora may still carry labels (the demo's prosody classes):
  # their label set is the labels found.
  label_names = tuple(label_names) or tuple(sorted({l for l in labels if l}))
  label = np.array([label_names.index(l) if l in label_names else -1 for l in labels],
                   np.int16)
  lengths = np.array([len(t) for t in tokens], np.int64)
  offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  ids = (np.concatenate([np.asarray(t, np.int32) for t in tokens]) if len(tokens)
         else np.zeros(0, np.int32))
  keys = np.array(keys, dtype=np.uint64)
  position = np.zeros(len(frames), np.int64)
  parts = {}
  for s in range(len(splits)):
    for b in range(len(buckets)):
      rows = np.flatnonzero((split == s) & (bucket == b))
      if not len(rows):
        continue
      rows = rows[np.argsort(keys[rows], kind="stable")]
      position[rows] = np.arange(len(rows))
      parts[part_name(splits[s], b)] = rows
  index = Index(frames=frames, num_tokens=lengths.astype(np.int16), split=split,
                bucket=bucket.astype(np.int8), shard=np.zeros(len(frames), np.int32),
                position=position, label=label, token_ids=ids, token_offsets=offsets,
                splits=splits, buckets=tuple(int(b) for b in buckets), labels=tuple(label_names),
                num_shards=int(num_shards), file_format=file_format)
  return index, parts


def assign_shards(index: Index, parts: dict, shard_lengths: dict) -> None:
  """Each row's shard from its part's written shard lengths (in order)."""
  for name, rows in parts.items():
    bounds = np.cumsum(shard_lengths[name])
    if bounds[-1] != len(rows):
      raise IOError(f"part {name}: shards hold {bounds[-1]} examples, expected {len(rows)}")
    index.shard[rows] = np.searchsorted(bounds, index.position[rows], side="right")
