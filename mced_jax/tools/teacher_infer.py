"""Label a text file or a pair manifest with the fine-tuned teacher.

    python -m mced_jax.tools.teacher_infer --teacher=runs/mced/teacher_cls/model \\
        --input=pairs.csv --threshold=0.6 --out=runs/labelled.csv

For a manifest (CSV/JSONL with a `text` column) every row gets the teacher's label,
its confidence and every class probability; with --threshold, `--out` keeps only
the emotion-salient rows (max probability >= threshold), as the paper did to build
EmoATMovie (3.1.2), and `<out stem>.all.csv` holds every row. The scoring itself is
mced_jax.models.teacher.TeacherClassifier.
"""

from __future__ import annotations

import csv
import json
import os
import sys


def read_rows(path: str) -> list[dict]:
  if path.endswith(".jsonl"):
    with open(path, encoding="utf-8") as f:
      rows = [json.loads(l) for l in f if l.strip()]
  elif path.endswith(".csv"):
    with open(path, encoding="utf-8", newline="") as f:
      rows = list(csv.DictReader(f))
  else:
    with open(path, encoding="utf-8", errors="replace") as f:
      rows = [{"text": l.rstrip("\n")} for l in f if l.strip()]
  if not rows:
    raise ValueError(f"{path}: no rows")
  if "text" not in rows[0]:
    raise ValueError(f"{path}: needs a 'text' column; it has {sorted(rows[0])}")
  return rows


def label_rows(rows: list[dict], teacher_dir: str, batch_size: int = 64):
  """Adds teacher_label, teacher_confidence and p_<class> to every row; returns
  (rows, probabilities [N, C])."""
  from mced_jax.models.teacher import TeacherClassifier  # pylint: disable=import-outside-toplevel
  clf = TeacherClassifier.from_dir(teacher_dir, batch_size=batch_size)
  probs = clf.predict([r["text"] for r in rows])
  for r, pr in zip(rows, probs):
    r["teacher_label"] = clf.labels[int(pr.argmax())]
    r["teacher_confidence"] = f"{pr.max():.4f}"
    for name, v in zip(clf.labels, pr):
      r[f"p_{name}"] = f"{v:.4f}"
  return rows, probs


def write_rows(path: str, rows: list[dict]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["text"])
    w.writeheader()
    w.writerows(rows)


def _flags():
  from absl import flags  # pylint: disable=import-outside-toplevel
  fv = flags.FlagValues()
  flags.DEFINE_string("teacher", None, "fine-tuned teacher directory", flag_values=fv)
  flags.DEFINE_string("input", None, ".txt (one per line), .csv or .jsonl", flag_values=fv)
  flags.DEFINE_string("out", None, "output CSV", flag_values=fv)
  flags.DEFINE_float("threshold", 0.0, "keep rows whose max probability is at least this",
                     flag_values=fv)
  flags.DEFINE_integer("batch_size", 64, "texts per batch", flag_values=fv)
  return fv


def main(argv) -> list[dict]:
  """argv: [program, --teacher=DIR, --input=FILE, --out=FILE, --threshold=P]; returns
  the kept rows."""
  fv = _flags()
  rest = fv(list(argv))
  if len(rest) > 1 or not (fv.teacher and fv.input and fv.out):
    raise ValueError("usage: python -m mced_jax.tools.teacher_infer --teacher=DIR --input=FILE "
                     "--out=FILE [--threshold=P]")
  rows, probs = label_rows(read_rows(fv.input), fv.teacher, fv.batch_size)
  keep = [r for r, pr in zip(rows, probs) if pr.max() >= fv.threshold]
  write_rows(fv.out, keep)
  if fv.threshold > 0:
    write_rows(os.path.splitext(fv.out)[0] + ".all.csv", rows)
  labels = sorted({r["teacher_label"] for r in rows})
  counts = {n: sum(r["teacher_label"] == n for r in keep) for n in labels}
  print(f"labelled {len(rows)} rows; kept {len(keep)} with confidence >= {fv.threshold}: "
        f"{counts}")
  return keep


if __name__ == "__main__":
  main(sys.argv)
