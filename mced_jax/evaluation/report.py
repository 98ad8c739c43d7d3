"""Downstream results: per-run CSV, mean +- std tables, confusion plots."""

from __future__ import annotations

import csv
import io

import numpy as np

from mced_jax.evaluation import metrics as metrics_lib
from mced_jax.runtime import fs

METRICS = ("WA", "UAR", "F1", "WF1")


def summarize(results: list[dict], order=None) -> list[dict]:
  """One row per variant: mean and std of the test metrics over all its runs
  (folds x seeds), in `order` (default: first appearance)."""
  variants = list(order) if order else list(dict.fromkeys(r["variant"] for r in results))
  rows = []
  for v in variants:
    rs = [r for r in results if r["variant"] == v]
    if not rs:
      continue
    row = {"variant": v, "runs": len(rs), "folds": len({r["fold"] for r in rs}),
           "seeds": len({r["seed"] for r in rs})}
    for m in METRICS:
      vals = np.array([r["test"][m] for r in rs])
      row[m] = float(vals.mean())
      row[m + "_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    rows.append(row)
  return rows


def markdown_table(rows: list[dict], metrics=METRICS, reference: dict | None = None) -> str:
  head = "| model | " + " | ".join(metrics) + " | runs (folds x seeds) |"
  lines = [head, "|---" * (len(metrics) + 2) + "|"]
  for r in rows:
    cells = " | ".join(f"{r[m]:.3f} ± {r[m + '_std']:.3f}" for m in metrics)
    lines.append(f"| {r['variant']} | {cells} | {r['runs']} ({r['folds']} x {r['seeds']}) |")
  if reference:
    cells = " | ".join(f"{reference[m]:.3f}" if m in reference else "–" for m in metrics)
    lines.append(f"| {reference['name']} | {cells} | reference |")
  return "\n".join(lines)


def write_runs_csv(results: list[dict], path: str) -> None:
  f = io.StringIO()
  w = csv.writer(f)
  w.writerow(["variant", "fraction", "fold", "seed", "best_epoch", "train_utterances"] +
             [f"test_{m}" for m in METRICS] + [f"val_{m}" for m in METRICS])
  for r in results:
    w.writerow([r["variant"], r["fraction"], r["fold"], r["seed"], r["best_epoch"],
                r["train_utterances"]] + [f"{r['test'][m]:.4f}" for m in METRICS] +
               [f"{r['val'][m]:.4f}" for m in METRICS])
  fs.write_text(path, f.getvalue())


def seed_ensembles(results: list[dict], order=None) -> list[dict]:
  """Per variant and fold, its seeds as one model: the mean of their test
  probabilities, scored like a run (variant "<name> (<k>-seed ensemble)", seed
  "ensemble"; k times a single model's inference cost). Variants without the same
  number (>= 2) of seeds on every fold get none."""
  out = []
  for v in order or dict.fromkeys(r["variant"] for r in results):
    rs = [r for r in results if r["variant"] == v]
    by_fold = {f: [r for r in rs if r["fold"] == f] for f in dict.fromkeys(r["fold"] for r in rs)}
    sizes = {len(g) for g in by_fold.values()}
    if len(sizes) != 1 or min(sizes) < 2:
      continue
    k = sizes.pop()
    for fold, runs in by_fold.items():
      ids = list(runs[0]["test_ids"])
      probs = []
      for r in runs:
        where = {u: i for i, u in enumerate(r["test_ids"])}
        if set(where) != set(ids):
          raise ValueError(f"{v} {fold}: seeds {runs[0]['seed']} and {r['seed']} scored "
                           "different test utterances; cannot ensemble them")
        probs.append(np.asarray(r["test_probs"], np.float64)[[where[u] for u in ids]])
      mean = np.mean(probs, axis=0)
      true = np.asarray(runs[0]["test_true"])
      test = metrics_lib.classification_report(true, mean.argmax(-1), mean.shape[-1])
      out.append({"variant": f"{v} ({k}-seed ensemble)", "fold": fold, "seed": "ensemble",
                  "fraction": runs[0]["fraction"], "best_epoch": -1,
                  "train_utterances": runs[0]["train_utterances"], "test": test,
                  "val": {m: float("nan") for m in METRICS}, "test_ids": ids,
                  "test_probs": mean.tolist(), "test_true": true.tolist()})
  return out


def per_fold_table(results: list[dict], variants, metric: str = "UAR") -> str:
  """Test `metric` per fold (mean over seeds), one column per variant."""
  folds = list(dict.fromkeys(r["fold"] for r in results))
  lines = ["| fold | " + " | ".join(variants) + " |", "|---" * (len(variants) + 1) + "|"]
  for fold in folds:
    cells = []
    for v in variants:
      vals = [r["test"][metric] for r in results if r["variant"] == v and r["fold"] == fold]
      cells.append(f"{np.mean(vals):.3f}" if vals else "–")
    lines.append(f"| {fold} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _slug(variant: str) -> str:
  slug = variant.replace("+", "_plus_").replace("−", "_minus_").replace("-", "_minus_")
  return "_".join(filter(None, "".join(ch if ch.isalnum() else "_" for ch in slug).split("_")))


def confusion_names(results: list[dict], prefix: str) -> list[str]:
  return [f"{prefix}confusion_{_slug(v)}.png"
          for v in dict.fromkeys(r["variant"] for r in results)]


def confusion_plots(results: list[dict], classes, out_dir: str, prefix: str) -> list[str]:
  """One confusion matrix per variant, summed over its folds and seeds (PNG + txt)."""
  paths = []
  for v in dict.fromkeys(r["variant"] for r in results):
    rs = [r for r in results if r["variant"] == v]
    y = np.concatenate([r["test_true"] for r in rs])
    p = np.concatenate([np.asarray(r["test_probs"]).argmax(-1) for r in rs])
    cm = metrics_lib.confusion_matrix(y, p, len(classes))
    png = fs.join(out_dir, f"{prefix}confusion_{_slug(v)}.png")
    metrics_lib.plot_confusion(cm, classes, png,
                               f"{v}: test, summed over {len(rs)} runs")
    fs.write_text(png[:-4] + ".txt", metrics_lib.confusion_text(cm, classes) + "\n")
    paths.append(png)
  return paths


def bar_plot(rows: list[dict], path: str, title: str, reference: dict | None = None) -> None:
  """Mean ± std of every metric per variant, as grouped bars."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  x = np.arange(len(METRICS))
  width = 0.8 / max(len(rows), 1)
  fig, ax = plt.subplots(figsize=(2.2 + 1.3 * len(METRICS) + 0.3 * len(rows), 4))
  for i, r in enumerate(rows):
    ax.bar(x + (i - (len(rows) - 1) / 2) * width, [r[m] for m in METRICS], width,
           yerr=[r[m + "_std"] for m in METRICS], capsize=3, label=r["variant"])
  if reference:
    for j, m in enumerate(METRICS):
      if m in reference:
        ax.hlines(reference[m], j - 0.45, j + 0.45, colors="k", linestyles="--",
                  label=reference["name"] if j == 0 else None)
  ax.set_xticks(x, METRICS)
  ax.set_ylim(0, 1)
  ax.set_ylabel("test score (mean ± std over folds x seeds)")
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  fs.save_figure(fig, path)
  plt.close(fig)
