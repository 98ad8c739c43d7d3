"""mced_jax.evaluation.report: seed ensembles (extra Table-5 rows)."""

import numpy as np
import pytest

from mced_jax.evaluation import report


def _run(variant, fold, seed, ids, probs, true):
  return {"variant": variant, "fold": fold, "seed": seed, "fraction": 1.0,
          "train_utterances": 10, "best_epoch": 3, "test_ids": ids, "test_probs": probs,
          "test_true": true, "test": {}, "val": {}}


def test_seeds_vote_by_mean_probability_aligned_by_utterance():
  true = [0, 1, 2]
  # Each seed gets one utterance wrong, a different one; the mean gets all three right.
  seeds = [
      (["a", "b", "c"], [[0.4, 0.6, 0.0], [0.0, 0.9, 0.1], [0.1, 0.0, 0.9]]),
      (["c", "a", "b"], [[0.0, 0.1, 0.9], [0.9, 0.1, 0.0], [0.0, 0.4, 0.6]]),  # other order
      (["b", "c", "a"], [[0.1, 0.8, 0.1], [0.0, 0.6, 0.4], [0.8, 0.0, 0.2]]),
  ]
  order = {"a": 0, "b": 1, "c": 2}
  runs = [_run("Student+MCED", "fold1", s, ids, p, [true[order[u]] for u in ids])
          for s, (ids, p) in enumerate(seeds)]
  runs.append(_run("Student−MCED", "fold1", 0, ["a", "b", "c"], np.eye(3).tolist(), true))
  ens = report.seed_ensembles(runs)
  assert [r["variant"] for r in ens] == ["Student+MCED (3-seed ensemble)"]  # 1 seed: no row
  e = ens[0]
  assert e["seed"] == "ensemble" and e["fold"] == "fold1" and e["test_ids"] == ["a", "b", "c"]
  np.testing.assert_allclose(e["test_probs"][0], [2.1 / 3, 0.7 / 3, 0.2 / 3])
  assert e["test"]["UAR"] == 1.0 and e["test"]["WA"] == 1.0
  singles = [report.metrics_lib.classification_report(
      r["test_true"], np.argmax(r["test_probs"], 1), 3)["WA"] for r in runs[:3]]
  assert max(singles) < 1.0  # the ensemble is not any single seed
  rows = report.summarize(ens)
  assert rows[0]["variant"] == e["variant"] and rows[0]["runs"] == 1 and rows[0]["UAR"] == 1.0


def test_unequal_seeds_or_test_sets_are_refused():
  p = [[1.0, 0.0]]
  uneven = [_run("v", "f1", 0, ["a"], p, [0]), _run("v", "f1", 1, ["a"], p, [0]),
            _run("v", "f2", 0, ["b"], p, [0])]
  assert report.seed_ensembles(uneven) == []  # 2 seeds on f1, 1 on f2
  other = [_run("v", "f1", 0, ["a"], p, [0]), _run("v", "f1", 1, ["z"], p, [0])]
  with pytest.raises(ValueError, match="v f1: seeds 0 and 1 scored different test"):
    report.seed_ensembles(other)
