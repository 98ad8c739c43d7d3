"""The classic reference: utterance statistics + logistic regression on the student's folds."""

import numpy as np
import pytest

from mced_jax.evaluation import classic
from mced_jax.evaluation import labelled
from mced_jax.evaluation import protocols


def test_utterance_stats_are_mean_then_std():
  x = np.arange(12, dtype=np.float32).reshape(4, 3)
  np.testing.assert_allclose(classic.utterance_stats(x), np.r_[x.mean(0), x.std(0)])


def test_logreg_separates_and_weighs_classes_equally():
  rng = np.random.default_rng(0)
  # 90 of class 0, 10 of class 1, separable along dim 0.
  y = np.r_[np.zeros(90, int), np.ones(10, int)]
  x = rng.normal(size=(100, 3)) + 3.0 * y[:, None] * np.array([1.0, 0, 0])
  wt, b = classic.fit_logreg(x, y, 2, l2=1e-3)
  pred = (x @ wt + b).argmax(1)
  assert (pred[y == 1] == 1).mean() >= 0.9  # the rare class is not sacrificed
  assert (pred[y == 0] == 0).mean() >= 0.9


def _corpus(speaker_offset: float):
  """6 speakers x 10 utterances, 2 classes told apart by feature 0's level
  relative to the speaker; each speaker shifts every feature by its own offset."""
  rng = np.random.default_rng(1)
  records, feats, labels = [], {}, {}
  for s in range(6):
    for i in range(10):
      u, y = f"s{s}_{i}", i % 2
      x = rng.normal(size=(int(rng.integers(20, 40)), 4)).astype(np.float32)
      x[:, 0] += 1.5 * y
      feats[u] = x + speaker_offset * s
      records.append({"utt_id": u, "speaker": f"spk{s}", "label": "ab"[y]})
      labels[u] = y
  return labelled.Corpus(records, feats, ("a", "b"), labels, "synthetic")


def test_per_speaker_standardisation_removes_speaker_offsets():
  corpus = _corpus(speaker_offset=4.0)
  fold = protocols.make_folds(corpus.records, "speaker_kfold", 3)[0]
  speaker = classic.run_fold(corpus, fold, "speaker", 0.1)
  pooled = classic.run_fold(corpus, fold, "fold", 0.1)
  assert speaker["UAR"] >= 0.9
  assert speaker["UAR"] > pooled["UAR"]


def test_cli_needs_one_prepared_dir(capsys):
  with pytest.raises(SystemExit) as e:
    classic.main(["classic", "--help"])
  assert e.value.code == 0 and "logistic regression" in capsys.readouterr().out
  assert classic.main(["classic"]) == 2
  assert classic.main(["classic", "/nonexistent/prepared"]) == 2
  assert "/nonexistent/prepared: no records.jsonl" in capsys.readouterr().err
