"""A labelled corpus in memory, for downstream fine-tuning: loading from the
prepared-dataset API, fold or per-speaker standardisation, class weights and the
seeded training-batch plan."""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipelines.standardize import frame_stats
from mced_jax.evaluation import protocols


@dataclasses.dataclass
class Corpus:
  records: list  # labelled records (dicts of records.jsonl)
  features: dict  # utt_id -> raw float32 [T, 130]
  classes: tuple
  labels: dict  # utt_id -> class index
  path: str


def load_corpus(path: str, classes=()) -> Corpus:
  """The labelled utterances of a prepared dataset, raw features in memory."""
  from data_pipelines.dataset import PreparedDataset  # pylint: disable=import-outside-toplevel
  ds = PreparedDataset(path)
  classes = ds.classes(classes)
  if len(classes) < 2:
    raise ValueError(f"{path}: fine-tuning needs >= 2 classes, found {list(classes)}")
  recs = [r for r in ds.records if r.get("label") in classes]
  if not recs:
    raise ValueError(f"{path}: no utterance has a label in {list(classes)}")
  return Corpus(recs, ds.features(recs, normalized=False), classes,
                {r["utt_id"]: classes.index(r["label"]) for r in recs}, ds.path)


def standardized(corpus: Corpus, fold: protocols.Fold, train_ids, mode: str) -> dict:
  """utt_id -> standardised features of the fold. "fold": every utterance with the
  training speakers' frame-weighted mean/std (a classic pipeline). "speaker": each
  speaker with its own statistics over all of its utterances -- no labels, no other
  speaker's data, so it is legitimate for unseen test speakers too."""
  ids = list(train_ids) + fold.validation + fold.test
  groups = {None: ids} if mode == "fold" else {}
  if mode == "speaker":
    speaker = speakers(corpus)
    for u in ids:
      groups.setdefault(speaker[u], []).append(u)
  elif mode != "fold":
    raise ValueError(f"finetune.normalize must be 'fold' or 'speaker', got {mode!r}")
  out = {}
  for key, members in groups.items():
    stat_ids = train_ids if key is None else members
    mean, std, _ = frame_stats(corpus.features[u] for u in stat_ids)
    mean, std = mean.astype(np.float32), std.astype(np.float32)
    out.update({u: (corpus.features[u] - mean) / std for u in members})
    if key is None:
      out["__norm__"] = (mean, std)
  return out


def speakers(corpus: Corpus) -> dict:
  """utt_id -> speaker."""
  return {r["utt_id"]: r["speaker"] for r in corpus.records}


def frame_buckets(config) -> tuple:
  """The labelled corpus's frame buckets: finetune.frame_buckets, else the pairs'."""
  return tuple(config.finetune.frame_buckets) or tuple(config.data.frame_buckets)


def train_plan(lengths: dict, ids, batch_size: int, crop: int, epochs: int, seed: int,
               speakers: dict | None = None, group_size: int = 0):
  """Every training batch of a run, in order: (indices, crop offsets) per batch.
  Utterances longer than `crop` frames get a random window (augmentation). A pure
  function of the seed, so a resumed run replays the same batches. With
  `group_size`, a batch is batch_size / group_size groups of consecutive rows, each
  group `group_size` utterances of one speaker (`speakers`: utt_id -> speaker), for
  a model that standardises its representation per speaker group."""
  rng = np.random.default_rng(seed)
  if group_size and (batch_size % group_size or not speakers):
    raise ValueError(f"speaker groups of {group_size} need speakers and a batch size that "
                     f"is a multiple of it (got {batch_size})")
  by_speaker = {}
  for i, u in enumerate(ids):
    by_speaker.setdefault(speakers[u] if group_size else "", []).append(i)
  plan = []
  for _ in range(epochs):
    if not group_size:
      chunks = [[i] for i in rng.permutation(len(ids))]
    else:  # each speaker's utterances in random groups; a speaker's remainder waits
      chunks = [perm[k: k + group_size] for s in sorted(by_speaker)
                for perm in [rng.permutation(by_speaker[s])]
                for k in range(0, len(perm) - group_size + 1, group_size)]
      chunks = [chunks[j] for j in rng.permutation(len(chunks))]
    per = batch_size // max(group_size, 1)
    for s in range(0, len(chunks) - per + 1, per):  # drop the remainder
      idx = np.concatenate(chunks[s: s + per])
      offs = [int(rng.integers(0, lengths[ids[i]] - crop + 1)) if lengths[ids[i]] > crop
              else 0 for i in idx]
      plan.append((idx, offs))
  return plan


def class_weights(labels, num_classes: int, mode: str) -> np.ndarray:
  if mode == "none":
    return np.ones(num_classes, np.float32)
  if mode != "balanced":
    raise ValueError(f"finetune.class_weighting must be 'balanced' or 'none', got {mode!r}")
  counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
  w = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
  return w.astype(np.float32)


def mask_augment(x: np.ndarray, mask: np.ndarray, rng: np.random.Generator, time_masks: int,
                 time_width: int, feature_masks: int, feature_width: int) -> np.ndarray:
  """SpecAugment-style masking of standardised features [B, T, F] (a copy): per
  example, `time_masks` spans of up to `time_width` valid frames and
  `feature_masks` bands of up to `feature_width` dimensions are set to 0 (the
  standardised mean). Padding is untouched."""
  x = x.copy()
  for b in range(x.shape[0]):
    n = int(mask[b].sum())
    for _ in range(time_masks if n else 0):
      w = int(rng.integers(0, min(time_width, n) + 1))
      t0 = int(rng.integers(0, n - w + 1))
      x[b, t0: t0 + w] = 0.0
    for _ in range(feature_masks):
      w = int(rng.integers(0, feature_width + 1))
      f0 = int(rng.integers(0, x.shape[2] - w + 1))
      x[b, :n, f0: f0 + w] = 0.0
  return x
