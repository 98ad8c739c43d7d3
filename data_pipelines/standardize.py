"""Per-dimension statistics that standardise IS16 features (numpy only).

One function for every place that standardises: preparation (train split, or
each speaker), fine-tuning (a fold's training speakers, or each speaker) and
prediction (each speaker's files)."""

from __future__ import annotations

import numpy as np


def frame_stats(arrays) -> tuple[np.ndarray, np.ndarray, int]:
  """Frame-weighted (mean, std, frames) over an iterable of [T, F] arrays, in one
  streaming pass (Chan et al.'s pairwise update: stable where raw IS16 values
  reach 1e7). Constant dimensions get std 1 (left unscaled)."""
  n, mean, m2 = 0, None, None
  for x in arrays:
    x = np.asarray(x, np.float64)
    if not len(x):
      continue
    nb, mb = len(x), x.mean(0)
    m2b = ((x - mb) ** 2).sum(0)
    if mean is None:
      n, mean, m2 = nb, mb, m2b
      continue
    delta, tot = mb - mean, n + nb
    mean = mean + delta * nb / tot
    m2 = m2 + m2b + delta ** 2 * n * nb / tot
    n = tot
  if mean is None:
    raise ValueError("no frames to compute statistics from")
  std = np.sqrt(m2 / n)
  return mean, np.where(std < 1e-6, 1.0, std), n


# ---------------------------------------------------------------- mergeable statistics
# Preparation computes its statistics from per-utterance partials merged in a fixed
# order (utterances by id within a speaker, speakers by key), so the result does
# not depend on how the work was split: the process pool on one machine and a Beam
# job on many give the same float64 values, hence the same stored features.


def partial(x) -> tuple[int, np.ndarray, np.ndarray]:
  """(frames, mean, sum of squared deviations) of one utterance's [T, F] features."""
  x = np.asarray(x, np.float64)
  mean = x.mean(0)
  return len(x), mean, ((x - mean) ** 2).sum(0)


def merge(partials) -> tuple[int, np.ndarray, np.ndarray]:
  """Chan et al.'s pairwise merge of partials, in the order given."""
  n, mean, m2 = 0, None, None
  for nb, mb, m2b in partials:
    if not nb:
      continue
    if mean is None:
      n, mean, m2 = nb, np.asarray(mb, np.float64), np.asarray(m2b, np.float64)
      continue
    delta, tot = mb - mean, n + nb
    mean = mean + delta * nb / tot
    m2 = m2 + m2b + delta ** 2 * n * nb / tot
    n = tot
  return n, mean, m2


def finish(merged) -> tuple[np.ndarray, np.ndarray, int]:
  """(mean, std, frames) of a merged partial; constant dimensions get std 1."""
  n, mean, m2 = merged
  if mean is None:
    raise ValueError("no frames to compute statistics from")
  std = np.sqrt(m2 / n)
  return mean, np.where(std < 1e-6, 1.0, std), n


def grouped(items) -> dict:
  """Statistics from (speaker key, utt_id, in_stats_split, partial) items:
  {"speakers": {key: merged over all its utterances},
   "split": {key: merged over its utterances in the statistics split}},
  each speaker's utterances merged in utt_id order."""
  by = {}
  for key, utt, in_split, p in items:
    by.setdefault(key, []).append((utt, in_split, p))
  speakers, split = {}, {}
  for key, rows in by.items():
    rows.sort(key=lambda r: r[0])
    speakers[key] = merge(p for _, _, p in rows)
    split[key] = merge(p for _, s, p in rows if s)
  return {"speakers": speakers, "split": split}


def global_stats(split_by_speaker: dict) -> tuple[np.ndarray, np.ndarray, int]:
  """The statistics split's (mean, std, frames): speakers merged in key order."""
  return finish(merge(split_by_speaker[k] for k in sorted(split_by_speaker)))
