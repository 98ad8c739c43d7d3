r"""A classic reference on the student's own folds: utterance statistics + logistic regression.

    python -m mced_jax.evaluation.classic runs/ravdess_real/data/ravdess --normalize=speaker \
        --holdout=fold6 --out=runs/ravdess_real/classic.md

Each utterance becomes the mean and the standard deviation of its 130 IS16 frame
features (65 LLDs + deltas; 260 numbers), after the same standardisation the
student gets (`fold`: the training speakers' statistics; `speaker`: each speaker's
own, no labels). A multinomial logistic regression (L2, balanced class weights,
full-batch gradient descent, deterministic) trains on each fold's training
speakers and is scored on its test speakers, like the student (the validation
speakers are left out here too). It tells how much of the task simple
utterance statistics already solve: the level the student's pooling has to reach.
"""

from __future__ import annotations

import sys

import numpy as np

from mced_jax.evaluation import labelled
from mced_jax.evaluation import metrics as metrics_lib
from mced_jax.evaluation import protocols
from mced_jax.runtime import cli


def utterance_stats(frames: np.ndarray) -> np.ndarray:
  """[T, D] frames -> [2D]: per-dimension mean and standard deviation."""
  return np.concatenate([frames.mean(0), frames.std(0)]).astype(np.float64)


def fit_logreg(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float, steps: int = 500,
               lr: float = 0.1):
  """Softmax regression on standardised inputs, classes weighted inversely to
  their frequency (UAR weighs classes equally). Returns (W, b)."""
  w = labelled.class_weights(y, num_classes, "balanced").astype(np.float64)[y]
  w /= w.sum()
  onehot = np.eye(num_classes)[y]
  wt, b = np.zeros((x.shape[1], num_classes)), np.zeros(num_classes)
  for _ in range(steps):
    z = x @ wt + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g = (p - onehot) * w[:, None]
    wt -= lr * (x.T @ g + l2 * wt)
    b -= lr * g.sum(0)
  return wt, b


def stats_features(feats: dict, ids) -> np.ndarray:
  """The classic representation: each utterance's frame mean + std."""
  return np.stack([utterance_stats(feats[u]) for u in ids])


def run_fold(corpus: labelled.Corpus, fold: protocols.Fold, normalize: str, l2: float,
             featurize=stats_features) -> dict:
  """Fits on the fold's training speakers, scores its test speakers. `featurize`
  maps (standardised features by utterance, ids) to one row per utterance."""
  feats = labelled.standardized(corpus, fold, fold.train, normalize)
  nc = len(corpus.classes)

  def xy(ids):
    return featurize(feats, ids), np.array([corpus.labels[u] for u in ids])

  x_tr, y_tr = xy(fold.train)
  x_te, y_te = xy(fold.test)
  mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6  # statistics of the training speakers only
  wt, b = fit_logreg((x_tr - mu) / sd, y_tr, nc, l2)
  pred = (((x_te - mu) / sd) @ wt + b).argmax(1)
  return metrics_lib.classification_report(y_te, pred, nc)


def report(path: str, normalize: str, l2: float, holdout, num_folds: int = 6,
           featurize=stats_features, what: str = "") -> str:
  """The markdown report over every fold; `what` names the representation."""
  corpus = labelled.load_corpus(path)
  folds = protocols.make_folds(corpus.records, "speaker_kfold", num_folds)
  res = {f.name: run_fold(corpus, f, normalize, l2, featurize) for f in folds}
  what = what or "Utterance mean + std of the IS16 frames"
  return format_report(f"{what} ({normalize}-standardised) + logistic regression (L2 {l2:g}, "
                       f"balanced), {corpus.path}, {len(folds)} speaker folds.", res, holdout)


def format_report(title: str, res: dict, holdout) -> str:
  """Markdown: mean ± std over the selection folds and the held-out ones apart,
  then UAR per fold. `res` maps fold name -> classification report."""
  held = [n for n in res if protocols.is_held_out(n, holdout)]
  sel = [n for n in res if n not in held]
  lines = [title, "", "| folds | WA | UAR | F1 | WF1 |", "|---|---|---|---|---|"]
  for name, part in (("selection", sel), ("held out: " + ", ".join(held), held)):
    if part:
      cells = " | ".join(f"{np.mean([res[n][m] for n in part]):.3f} ± "
                         f"{np.std([res[n][m] for n in part], ddof=1) if len(part) > 1 else 0:.3f}"
                         for m in ("WA", "UAR", "F1", "WF1"))
      lines.append(f"| {name} | {cells} |")
  lines += ["", "| fold | " + " | ".join(res) + " |", "|---" * (len(res) + 1) + "|",
            "| UAR | " + " | ".join(f"{r['UAR']:.3f}" for r in res.values()) + " |"]
  return "\n".join(lines) + "\n"


def main(argv) -> int:
  from absl import flags  # pylint: disable=import-outside-toplevel
  fv = flags.FlagValues()
  flags.DEFINE_enum("normalize", "speaker", ["speaker", "fold"], "feature standardisation",
                    flag_values=fv)
  flags.DEFINE_float("l2", 0.1, "L2 strength (chosen on RAVDESS folds 1-5: 0.1 of 1e-3, 1e-2, "
                     "0.1)", flag_values=fv)
  flags.DEFINE_integer("folds", 6, "speaker folds", flag_values=fv)
  cli.define_report_flags(fv)
  usage = ("usage: python -m mced_jax.evaluation.classic PREPARED_DIR [--normalize=speaker] [--l2=0.1] "
           "[--holdout=fold6] [--out=FILE]")
  args = cli.parse(fv, argv, usage, __doc__)
  if len(args) != 1:
    print(usage, file=sys.stderr)
    return 2
  try:
    text = report(args[0], fv.normalize, fv.l2, cli.holdout(fv), fv.folds)
  except (FileNotFoundError, ValueError) as e:  # no prepared corpus, too few classes
    print(f"error: {e}", file=sys.stderr)
    return 2
  return cli.emit(text, fv.out)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
