"""Classification metrics against hand-computed cases."""

import numpy as np
import pytest

from mced_jax.evaluation import metrics


def test_hand_computed_case():
  # true: 0 0 0 1 1 2 ; pred: 0 0 1 1 0 2
  y, p = [0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 0, 2]
  r = metrics.classification_report(y, p, 3)
  # recalls 2/3, 1/2, 1; precisions 2/3, 1/2, 1; F1 = same as recall here
  assert r["WA"] == pytest.approx(4 / 6)
  assert r["UAR"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
  assert r["F1"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
  assert r["WF1"] == pytest.approx((3 * 2 / 3 + 2 * 1 / 2 + 1 * 1) / 6)
  np.testing.assert_array_equal(metrics.confusion_matrix(y, p, 3),
                                [[2, 1, 0], [1, 1, 0], [0, 0, 1]])


def test_absent_class_and_precision_recall_asymmetry():
  y, p = [0, 0, 1, 1], [0, 2, 1, 1]  # class 2 never true, predicted once
  r = metrics.classification_report(y, p, 3)
  # class 0: P=1, R=.5, F1=2/3; class 1: P=1, R=1, F1=1; class 2 left out of UAR/F1
  assert r["UAR"] == pytest.approx(0.75)
  assert r["F1"] == pytest.approx((2 / 3 + 1) / 2)
  assert r["WF1"] == pytest.approx((2 * 2 / 3 + 2 * 1) / 4)
  assert "true \\ pred" in metrics.confusion_text(metrics.confusion_matrix(y, p, 3), "abc")
