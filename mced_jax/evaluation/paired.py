"""Paired statistics for comparing two recipes on the same folds and seeds.

Folds are the independent units (each tests other speakers); the seeds of a fold
share its test speakers, so they are averaged within the fold first. For arms A
and B with scores a[f, s] and b[f, s]:

  d[f, s] = a[f, s] - b[f, s]        paired run differences (same fold, same seed)
  d_f     = mean_s d[f, s]           one difference per fold
  mean    = mean_f d_f               the effect
  t interval: mean ± t(0.975, F-1) · sd(d_f) / sqrt(F), and the two-sided t-test p
  bootstrap interval: folds resampled with replacement, then seeds within each
    drawn fold (percentile, 10,000 draws, seeded: the same numbers every time)
  sign test: folds with d_f > 0 against d_f < 0 (ties dropped), two-sided binomial

Ensembles (one prediction per fold) are the case of one "seed" per fold.
`holm` adjusts a family of p-values (Holm-Bonferroni) for the secondary arms.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats


@dataclasses.dataclass
class Paired:
  folds: int
  runs: int
  mean: float
  fold_diffs: dict  # fold -> mean difference over its seeds
  t_low: float
  t_high: float
  p_t: float
  boot_low: float
  boot_high: float
  folds_up: int  # folds with d_f > 0
  folds_down: int  # folds with d_f < 0
  p_sign: float
  runs_up: int  # paired runs with d > 0 (descriptive: runs within a fold are not independent)
  runs_down: int

  def excludes_zero(self) -> bool:
    """The 95 % t interval lies wholly on one side of 0."""
    return self.t_low > 0 or self.t_high < 0


def paired(a: dict, b: dict, level: float = 0.95, draws: int = 10_000, seed: int = 0) -> Paired:
  """a, b: {(fold, seed): score}. Every (fold, seed) of `a` must be in `b` and the
  other way round: a comparison with missing runs is refused, not silently cut."""
  if set(a) != set(b):
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    raise ValueError(f"paired comparison needs the same (fold, seed) runs in both arms; "
                     f"only in the first: {only_a[:5]}, only in the second: {only_b[:5]}")
  if not a:
    raise ValueError("paired comparison of no runs")
  folds = list(dict.fromkeys(f for f, _ in a))
  per_fold = {f: np.array([a[k] - b[k] for k in a if k[0] == f], np.float64) for f in folds}
  d_f = np.array([per_fold[f].mean() for f in folds])
  n = len(d_f)
  mean = float(d_f.mean())
  if n > 1:
    sd = float(d_f.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / np.sqrt(n)
    p_t = float(2 * stats.t.sf(abs(mean) / (sd / np.sqrt(n)), n - 1)) if sd > 0 else (
        0.0 if mean != 0 else 1.0)
  else:
    half, p_t = float("inf"), 1.0
  rng = np.random.default_rng(seed)
  groups = [per_fold[f] for f in folds]
  boot = np.empty(draws)
  for i in range(draws):
    pick = rng.integers(0, n, n)
    boot[i] = np.mean([rng.choice(groups[j], len(groups[j])).mean() for j in pick])
  lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
  up, down = int((d_f > 0).sum()), int((d_f < 0).sum())
  p_sign = float(stats.binomtest(up, up + down, 0.5).pvalue) if up + down else 1.0
  runs = np.concatenate(groups)
  return Paired(folds=n, runs=len(runs), mean=mean, fold_diffs=dict(zip(folds, d_f.tolist())),
                t_low=mean - half, t_high=mean + half, p_t=p_t, boot_low=float(lo),
                boot_high=float(hi), folds_up=up, folds_down=down, p_sign=p_sign,
                runs_up=int((runs > 0).sum()), runs_down=int((runs < 0).sum()))


def holm(pvalues) -> list[float]:
  """Holm-Bonferroni adjusted p-values, in the input order."""
  p = np.asarray(list(pvalues), np.float64)
  order = np.argsort(p)
  adj = np.empty_like(p)
  running = 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (len(p) - rank) * p[i]))
    adj[i] = running
  return adj.tolist()


def describe(r: Paired, digits: int = 3) -> str:
  """'+0.012 [−0.030, +0.054], p = 0.48' (t interval and p)."""
  f = lambda x: f"{x:+.{digits}f}".replace("-", "−")
  return f"{f(r.mean)} [{f(r.t_low)}, {f(r.t_high)}], p = {r.p_t:.2g}"
