r"""Compare downstream recipes across work dirs, with a held-out fold kept apart.

    python -m mced_jax.compare runs/ravdess_real/real_speaker runs/ravdess_real/both_speaker \
        --holdout=fold6 --out=runs/ravdess_real/comparison.md

Reads each work dir's finetune/table5_runs.csv (one row per variant x fold x
seed; with finetune/table5_ensembles.csv, the seed ensembles as extra variants)
and writes one markdown report: per recipe and variant the test metrics as
mean ± std over the *selection* folds (every fold but the held-out ones), the
held-out fold on its own, the per-fold UAR, and how often Student+MCED beats
Student−MCED of the same recipe (per fold, on the seed mean; and per paired
fold × seed run; an ensemble against the other variant's ensemble).
Ingredients are chosen on the selection folds; the held-out fold is reported
untouched.
"""

from __future__ import annotations

import csv
import sys

import numpy as np

from mced_jax import cli
from mced_jax import fs
from mced_jax import protocols

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


def wins(rows, holdout, variant: str = MCED) -> dict:
  """`variant` (a Student+MCED row) vs the same name with Student−MCED: folds (seed
  means) and paired runs won, on the selection folds and on the held-out ones."""
  other = variant.replace(MCED, SCRATCH, 1)
  by = {(r["variant"], r["fold"], r["seed"]): float(r["test_UAR"]) for r in rows}
  folds = list(dict.fromkeys(r["fold"] for r in rows))
  res = {}
  for part, keep in (("select", False), ("holdout", True)):
    fs_ = [f for f in folds if protocols.is_held_out(f, holdout) == keep]
    fold_wins, pair_wins, pairs = 0, 0, 0
    for f in fs_:
      seeds = sorted({s for (v, ff, s) in by if ff == f and v == variant})
      m = [by.get((variant, f, s)) for s in seeds]
      o = [by.get((other, f, s)) for s in seeds]
      if None in m or None in o:
        continue
      fold_wins += np.mean(m) > np.mean(o)
      pair_wins += sum(a > b for a, b in zip(m, o))
      pairs += len(seeds)
    res[part] = (int(fold_wins), len(fs_), int(pair_wins), pairs)
  return res


def report(workdirs, holdout) -> str:
  lines = [f"Held-out fold(s): {', '.join(holdout)} (not used to choose anything).", ""]
  head = ("| recipe | model | " + " | ".join(METRICS) +
          " | held-out UAR | +MCED > −MCED: folds / runs |")
  lines += ["Selection folds: mean ± std over folds × seeds.", "", head,
            "|---" * (len(METRICS) + 4) + "|"]
  per_fold = []
  for w in workdirs:
    rows = read_runs(w)
    s = summarize(rows, holdout)
    name = fs.basename(w.rstrip("/"))
    for v, e in s.items():
      cells = " | ".join(f"{e['select'][m][0]:.3f} ± {e['select'][m][1]:.3f}"
                         if e["select"] else "–" for m in METRICS)
      held = "–"
      if e["holdout"]:
        mean, std, n = e["holdout"]["UAR"]
        held = f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"  # one run: no spread
      wtxt = ""
      if v.startswith(MCED) and v.replace(MCED, SCRATCH, 1) in s:
        win = wins(rows, holdout, v)
        w_sel, w_hold = win["select"], win["holdout"]
        wtxt = (f"{w_sel[0]}/{w_sel[1]} / {w_sel[2]}/{w_sel[3]} (held out: "
                f"{w_hold[0]}/{w_hold[1]} / {w_hold[2]}/{w_hold[3]})")
      lines.append(f"| {name} | {v} | {cells} | {held} | {wtxt} |")
      per_fold.append((name, v, e["folds"]))
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
  cli.define_report_flags(fv)
  usage = "usage: python -m mced_jax.compare WORKDIR [WORKDIR ...] [--holdout=fold6] [--out=FILE]"
  workdirs = cli.parse(fv, argv, usage, __doc__)
  if not workdirs:
    print(usage, file=sys.stderr)
    return 2
  return cli.emit(report(workdirs, cli.holdout(fv)), fv.out)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
