r"""Compare downstream recipes across work dirs with paired statistics.

    python -m mced_jax.evaluation.compare runs/evidence/mced_demo runs/evidence/shuffled \
        --reference=runs/evidence/mced_demo --out=comparison.md

Reads each work dir's finetune/table5_runs.csv (one row per variant x fold x
seed; with finetune/table5_ensembles.csv, the seed ensembles as extra variants)
and writes one markdown report: per recipe and variant the test metrics (mean ±
std over folds x seeds), then every Student+MCED row minus the Student−MCED row
of the same recipe, paired by fold and seed (mced_jax.evaluation.paired): the mean
difference with its 95 % t interval over folds, the t-test p (raw and Holm-
adjusted over the report's comparisons), a bootstrap interval, and a sign test
over folds; ensembles are compared ensemble against ensemble. `--reference`
adds each recipe's Student+MCED minus the reference recipe's. `--holdout=fold6`
keeps folds apart (the statistics use the others; the held-out UAR is shown).
`--plot=FILE.png` draws the UAR differences as a forest plot (each comparison's
mean, 95 % t and bootstrap intervals, and its per-fold differences).
"""

from __future__ import annotations

import csv
import sys

import numpy as np

from mced_jax.evaluation import paired
from mced_jax.evaluation import protocols
from mced_jax.runtime import cli
from mced_jax.runtime import fs

METRICS = ("WA", "UAR", "F1", "WF1")
SCRATCH, MCED = "Student−MCED", "Student+MCED"


def read_runs(workdir: str) -> list[dict]:
  path = fs.join(workdir, "finetune", "table5_runs.csv")
  if not fs.exists(path):
    raise FileNotFoundError(f"{path} not found: run the finetune stage in {workdir} first")
  rows = list(csv.DictReader(fs.read_text(path).splitlines()))
  ens = fs.join(workdir, "finetune", "table5_ensembles.csv")
  if fs.exists(ens):
    rows += list(csv.DictReader(fs.read_text(ens).splitlines()))
  return [r for r in rows if float(r["fraction"]) == 1.0]


def summarize(rows, holdout) -> dict:
  """variant -> {"select": {metric: (mean, std, n)}, "holdout": ..., "folds": {fold: UAR}}"""
  out = {}
  for v in dict.fromkeys(r["variant"] for r in rows):
    rs = [r for r in rows if r["variant"] == v]
    entry = {"folds": {}}
    for part, keep in (("select", False), ("holdout", True)):
      sel = [r for r in rs if protocols.is_held_out(r["fold"], holdout) == keep]
      entry[part] = {m: (float(np.mean([float(r[f"test_{m}"]) for r in sel])),
                         float(np.std([float(r[f"test_{m}"]) for r in sel], ddof=1))
                         if len(sel) > 1 else 0.0, len(sel)) for m in METRICS} if sel else {}
    for fold in dict.fromkeys(r["fold"] for r in rs):
      entry["folds"][fold] = float(np.mean([float(r["test_UAR"]) for r in rs
                                            if r["fold"] == fold]))
    out[v] = entry
  return out


def scores(rows, variant: str, metric: str = "UAR", holdout=(), held_out: bool = False) -> dict:
  """{(fold, seed): test metric} of one variant, on the selection folds (or the
  held-out ones)."""
  return {(r["fold"], r["seed"]): float(r[f"test_{metric}"]) for r in rows
          if r["variant"] == variant and protocols.is_held_out(r["fold"], holdout) == held_out}


def against_scratch(rows, variant: str, metric: str = "UAR", holdout=()) -> paired.Paired:
  """`variant` (a Student+MCED row, or its ensemble) minus the Student−MCED row of
  the same recipe, paired by fold and seed over the selection folds."""
  other = variant.replace(MCED, SCRATCH, 1)
  return paired.paired(scores(rows, variant, metric, holdout), scores(rows, other, metric, holdout))


def _fmt(x: float) -> str:
  return f"{x:+.3f}".replace("-", "−")


def _diff_row(label: str, uar: paired.Paired, wf1: paired.Paired, p_holm: str) -> str:
  return (f"| {label} | {_fmt(uar.mean)} [{_fmt(uar.t_low)}, {_fmt(uar.t_high)}] | "
          f"{uar.p_t:.2g} | {p_holm} | [{_fmt(uar.boot_low)}, {_fmt(uar.boot_high)}] | "
          f"{uar.folds_up}/{uar.folds_down} ({uar.p_sign:.2g}) | {uar.runs_up}/{uar.runs_down} | "
          f"{_fmt(wf1.mean)} [{_fmt(wf1.t_low)}, {_fmt(wf1.t_high)}], {wf1.p_t:.2g} |")


DIFF_HEAD = ["| comparison | ΔUAR [95 % t interval] | p (t) | p (Holm) | bootstrap 95 % | "
             "folds +/− (sign p) | runs +/− | ΔWF1 [95 % t], p |",
             "|---|---|---|---|---|---|---|---|"]


def forest_plot(comparisons, path: str) -> None:
  """One row per comparison: the mean UAR difference, its 95 % t interval (thick)
  and bootstrap interval (thin), and each fold's difference (dots); 0 marked."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  n = len(comparisons)
  fig, ax = plt.subplots(figsize=(10, 1.4 + 0.42 * n))
  for i, (label, uar, _, ensemble) in enumerate(comparisons):
    y = n - 1 - i
    color = "tab:purple" if ensemble else "tab:blue"
    ax.plot([uar.boot_low, uar.boot_high], [y, y], color=color, lw=1)
    if np.isfinite(uar.t_low):
      ax.plot([uar.t_low, uar.t_high], [y, y], color=color, lw=4, alpha=0.6)
    ax.plot(list(uar.fold_diffs.values()), [y] * len(uar.fold_diffs), "o", ms=3,
            color="0.45", zorder=1)
    ax.plot([uar.mean], [y], "D", color="k" if uar.excludes_zero() else color, ms=6, zorder=3)
  ax.axvline(0, color="k", lw=0.8, ls="--")
  short = lambda label: label.replace(MCED, "+MCED").replace(SCRATCH, "scratch")
  ax.set_yticks(range(n), [short(c[0]) for c in reversed(comparisons)], fontsize=8)
  ax.set_xlabel("test UAR difference (mean over folds)", fontsize=9)
  ax.set_title("thick: 95 % t interval over folds; thin: bootstrap interval; dots: the folds\n"
               "black diamond: the t interval excludes 0", fontsize=8)
  fig.tight_layout()
  fs.save_figure(fig, path)
  plt.close(fig)


def report(workdirs, holdout, reference: str | None = None, plot: str | None = None) -> str:
  held = f"Held-out fold(s): {', '.join(holdout)} (not used to choose anything)." if holdout \
      else "All folds."
  lines = [held, "", "Mean ± std over folds × seeds" + (" (selection folds)" if holdout else "")
           + "; ensembles: ± over folds.", "",
           "| recipe | model | " + " | ".join(METRICS) + " | held-out UAR | runs |",
           "|---" * (len(METRICS) + 4) + "|"]
  per_fold, comparisons = [], []
  by_dir = {w: read_runs(w) for w in ([reference] if reference else []) + list(workdirs)}
  for w in workdirs:
    rows = by_dir[w]
    s = summarize(rows, holdout)
    name = fs.basename(w.rstrip("/"))
    for v, e in s.items():
      cells = " | ".join(f"{e['select'][m][0]:.3f} ± {e['select'][m][1]:.3f}"
                         if e["select"] else "–" for m in METRICS)
      held_uar = "–"
      if e["holdout"]:
        mean, std, n = e["holdout"]["UAR"]
        held_uar = f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"  # one run: no spread
      n_runs = e["select"]["UAR"][2] if e["select"] else 0
      lines.append(f"| {name} | {v} | {cells} | {held_uar} | {n_runs} |")
      per_fold.append((name, v, e["folds"]))
      if v.startswith(MCED) and v.replace(MCED, SCRATCH, 1) in s:
        comparisons.append((f"{name}: {v} − {v.replace(MCED, SCRATCH, 1)}",
                            against_scratch(rows, v, "UAR", holdout),
                            against_scratch(rows, v, "WF1", holdout), "ensemble" in v))
    if reference and w != reference:
      ref_rows, ref_name = by_dir[reference], fs.basename(reference.rstrip("/"))
      for v in s:
        if v.startswith(MCED) and v in {r["variant"] for r in ref_rows}:
          pair = [paired.paired(scores(rows, v, m, holdout), scores(ref_rows, v, m, holdout))
                  for m in ("UAR", "WF1")]
          comparisons.append((f"{name} − {ref_name}: {v}", *pair, "ensemble" in v))
  if comparisons:
    # Holm over the single-run comparisons of this report; ensembles are summaries
    # of the same runs, so they are not counted again.
    singles = [i for i, c in enumerate(comparisons) if not c[3]]
    adj = dict(zip(singles, paired.holm([comparisons[i][1].p_t for i in singles])))
    lines += ["", "Paired differences (same folds and seeds; the fold is the unit: seeds are "
              "averaged within a fold, the t interval and p are over folds; Holm adjusts p "
              "over this report's single-run comparisons; runs +/− is descriptive):", ""]
    lines += DIFF_HEAD
    for i, (label, uar, wf1, _) in enumerate(comparisons):
      lines.append(_diff_row(label, uar, wf1, f"{adj[i]:.2g}" if i in adj else "–"))
    if plot:
      forest_plot(comparisons, plot)
      lines += ["", f"Forest plot of the UAR differences: `{plot}`."]
  folds = list(dict.fromkeys(f for _, _, fd in per_fold for f in fd))
  lines += ["", "Test UAR per fold (mean over seeds):", "",
            "| recipe | model | " + " | ".join(folds) + " |", "|---" * (len(folds) + 2) + "|"]
  for name, v, fd in per_fold:
    lines.append(f"| {name} | {v} | " + " | ".join(
        f"{fd[f]:.3f}" if f in fd else "–" for f in folds) + " |")
  return "\n".join(lines) + "\n"


def main(argv) -> int:
  from absl import flags  # pylint: disable=import-outside-toplevel
  fv = flags.FlagValues()
  cli.define_report_flags(fv, holdout_default="")
  flags.DEFINE_string("reference", "", "also compare every work dir's Student+MCED rows "
                      "with this work dir's (paired by fold and seed)", flag_values=fv)
  flags.DEFINE_string("plot", "", "also draw the UAR differences as a forest plot (PNG)",
                      flag_values=fv)
  usage = ("usage: python -m mced_jax.evaluation.compare WORKDIR [WORKDIR ...] [--holdout=fold6] "
           "[--reference=WORKDIR] [--out=FILE] [--plot=FILE.png]")
  workdirs = cli.parse(fv, argv, usage, __doc__)
  if not workdirs:
    print(usage, file=sys.stderr)
    return 2
  return cli.emit(report(workdirs, cli.holdout(fv), fv.reference or None, fv.plot or None),
                  fv.out)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
