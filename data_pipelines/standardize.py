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
