"""Classification metrics (paper 3.2): WA, UAR, macro F1, weighted F1, confusion
matrices as text and plots. (Metric *logging* is mced_jax/runtime/writers.py.)"""

from __future__ import annotations

import numpy as np

from mced_jax.runtime import fs


# ---------------- classification metrics (paper 3.2) ----------------


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
  """[true, predicted] counts."""
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
  return cm


def classification_report(y_true, y_pred, num_classes: int) -> dict:
  """WA (accuracy), UAR (macro recall), macro F1 and weighted F1.

  Classes absent from y_true are left out of UAR and macro F1 (their recall is
  undefined) and weigh 0 in WF1.
  """
  cm = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
  support = cm.sum(1)
  predicted = cm.sum(0)
  tp = np.diag(cm)
  recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
  precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
  denom = precision + recall
  f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
  present = support > 0
  total = support.sum()
  return {
      "WA": float(tp.sum() / total) if total else 0.0,
      "UAR": float(recall[present].mean()) if present.any() else 0.0,
      "F1": float(f1[present].mean()) if present.any() else 0.0,
      "WF1": float((f1 * support).sum() / total) if total else 0.0,
      "n": int(total),
  }


def confusion_text(cm: np.ndarray, names) -> str:
  w = max(8, max(len(n) for n in names) + 1)
  lines = ["true \\ pred".ljust(w) + "".join(n[:w - 1].rjust(w) for n in names)]
  for i, n in enumerate(names):
    lines.append(n.ljust(w) + "".join(str(int(v)).rjust(w) for v in cm[i]))
  return "\n".join(lines)


def plot_confusion(cm: np.ndarray, names, path: str, title: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
  fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 1.1 * len(names) + 1.5))
  ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
  ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
  ax.set_yticks(range(len(names)), names)
  for i in range(len(names)):
    for j in range(len(names)):
      ax.text(j, i, f"{int(cm[i, j])}\n{100 * norm[i, j]:.0f}%", ha="center", va="center",
              fontsize=8, color="white" if norm[i, j] > 0.5 else "black")
  ax.set(xlabel="predicted", ylabel="true", title=title)
  fig.tight_layout()
  fs.save_figure(fig, path)
  plt.close(fig)
