"""Paired statistics against a hand-computed example."""

import numpy as np
import pytest

from mced_jax.evaluation import paired


def _arms():
  # d[fold, seed]: fold1 0.02, 0.04; fold2 -0.01, 0.03; fold3 0.05, 0.03
  d = {("f1", 0): 0.02, ("f1", 1): 0.04, ("f2", 0): -0.01, ("f2", 1): 0.03,
       ("f3", 0): 0.05, ("f3", 1): 0.03}
  b = {k: 0.5 + 0.01 * i for i, k in enumerate(d)}
  return {k: b[k] + d[k] for k in d}, b


def test_paired_difference_interval_and_tests_by_hand():
  a, b = _arms()
  r = paired.paired(a, b)
  # By hand: fold means 0.03, 0.01, 0.04; mean 0.026667; sd 0.015275; se 0.0088192;
  # t(0.975, 2) = 4.302653 -> half-width 0.037946; t = 3.0237, and with 2 degrees of
  # freedom P(T > t) = 1/2 - t / (2 sqrt(t^2 + 2)) = 0.04709, so p = 0.0942.
  assert r.folds == 3 and r.runs == 6
  assert r.fold_diffs == pytest.approx({"f1": 0.03, "f2": 0.01, "f3": 0.04})
  assert r.mean == pytest.approx(0.026667, abs=1e-6)
  assert r.t_low == pytest.approx(-0.011279, abs=1e-5)
  assert r.t_high == pytest.approx(0.064613, abs=1e-5)
  assert r.p_t == pytest.approx(0.0942, abs=2e-4)
  assert not r.excludes_zero()
  # sign test: 3 folds up, none down: 2 * 0.5^3
  assert (r.folds_up, r.folds_down, r.p_sign) == (3, 0, pytest.approx(0.25))
  assert (r.runs_up, r.runs_down) == (5, 1)
  # the bootstrap interval lies inside the observed range of resampled means
  assert 0.01 - 0.02 <= r.boot_low <= r.mean <= r.boot_high <= 0.05
  assert paired.paired(a, b).boot_low == r.boot_low  # seeded: reproducible


def test_swapping_the_arms_mirrors_the_result_and_missing_runs_are_refused():
  a, b = _arms()
  r, s = paired.paired(a, b), paired.paired(b, a)
  assert s.mean == pytest.approx(-r.mean) and s.t_low == pytest.approx(-r.t_high)
  assert s.p_t == pytest.approx(r.p_t) and (s.folds_up, s.folds_down) == (0, 3)
  del b[("f2", 1)]
  with pytest.raises(ValueError, match="same \\(fold, seed\\) runs"):
    paired.paired(a, b)


def test_a_clear_effect_excludes_zero_and_holm_adjusts_by_hand():
  rng = np.random.default_rng(0)
  b = {(f"f{f}", s): 0.6 + 0.05 * rng.standard_normal() for f in range(6) for s in range(5)}
  a = {k: v + 0.1 + 0.01 * rng.standard_normal() for k, v in b.items()}
  r = paired.paired(a, b)
  assert r.excludes_zero() and r.t_low > 0.08 and r.p_t < 1e-4 and r.folds_up == 6
  assert r.p_sign == pytest.approx(2 * 0.5 ** 6)
  # Holm: sorted 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 -> max(0.06, 0.04) = 0.06
  assert paired.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
  assert paired.describe(r).startswith("+0.1")
