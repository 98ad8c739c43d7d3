r"""Linear probe of a student's frozen representation, on the classic reference's folds.

    python -m mced_jax.tools.probe runs/ravdess_real/demo_speaker_stats/distill/student \
        runs/ravdess_real/data/ravdess --init=distilled,random --level=pooled

Does distillation put emotion into the student's representation before any
labelled speech? Each utterance goes (whole, standardised like fine-tuning) through
the frozen student; its representation at `--level` (`pooled`: what the classifier
sees; an integer k: mean + std over frames of hidden state k, 0 = the Transformer's
input) feeds the logistic regression of `mced_jax.evaluation.classic` on each fold's training
speakers, scored on its test speakers. `--init=random` probes the same architecture
at a random initialisation (seeded): the line a distilled representation has to
beat. `--with_stats` appends the utterance statistics of the input frames (the
classic representation), to ask whether the student adds to them.

`--init=zero_shot` fits nothing: the distilled student's own head (the teacher's
text-emotion classes) labels each fold's test speakers, its classes matched to the
corpus's by name (happy = happiness, ...): what distillation alone learned,
before any labelled speech.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from data_pipelines import buckets as buckets_lib
from data_pipelines.adapters import text as text_corpora
from mced_jax.evaluation import classic
from mced_jax.evaluation import labelled
from mced_jax.evaluation import metrics as metrics_lib
from mced_jax.evaluation import protocols
from mced_jax.models import export as export_lib
from mced_jax.models import student as student_lib
from mced_jax.runtime import cli

BUCKETS = (250, 500, 1000, 1400, 1800)  # frames; longer utterances get their own shape
# Class names that mean the same emotion (corpora name them as adjectives or nouns).
SAME_CLASS = {"happy": "happiness", "joy": "happiness", "sad": "sadness", "angry": "anger",
              "surprised": "surprise", "fearful": "fear", "disgusted": "disgust", "neu": "neutral"}


class Featurizer:
  """(standardised features by utterance, ids) -> [N, D] frozen representations."""

  def __init__(self, student_dir: str, init: str, seed: int = 0, level="pooled",
               with_stats: bool = False, batch_size: int = 32):
    if init not in ("distilled", "random"):
      raise ValueError(f"--init must be 'distilled' or 'random', got {init!r}")
    from mced_jax.train import finetune  # pylint: disable=import-outside-toplevel
    params, meta = export_lib.load(student_dir)
    cfg = mlc.ConfigDict(meta["student"])
    self.student = student_lib.student_from_config(cfg)
    if level not in ("pooled", "logits") and not (
        str(level).isdigit() and int(level) <= cfg.num_layers):
      raise ValueError(f"--level must be 'pooled', 'logits' or 0..{cfg.num_layers}, got {level!r}")
    # Exports from before the names were kept: teachers trained on the text corpora.
    self.class_names = meta.get("teacher_class_names") or list(text_corpora.CLASSES)
    # Distilled: everything, the head too (zero-shot scoring uses it).
    self.params = (params if init == "distilled"
                   else finetune.init_params(self.student, cfg.feature_dim, seed, None))
    self.level, self.with_stats, self.batch_size = level, with_stats, batch_size
    self._memo = {}  # per utterance and input: per-speaker inputs repeat over folds
    self._apply = jax.jit(self._represent)

  def _represent(self, params, x, m):
    (logits, hidden, mask), state = self.student.apply({"params": params}, x, m,
                                                  mutable=["intermediates"])
    if self.level == "pooled":
      return state["intermediates"]["pooled"][0]
    if self.level == "logits":  # the distilled head: the teacher's classes
      return logits
    return student_lib.pool_frames(hidden[int(self.level)], mask, "stats")

  def __call__(self, feats: dict, ids) -> np.ndarray:
    keys = {u: (u, hash(feats[u].tobytes())) for u in ids}
    todo = sorted({u for u in ids if keys[u] not in self._memo}, key=lambda u: len(feats[u]))
    for s in range(0, len(todo), self.batch_size):
      chunk = todo[s: s + self.batch_size]
      frames = max(buckets_lib.bucket_for(len(feats[chunk[-1]]), BUCKETS),
                   len(feats[chunk[-1]]))
      x, m = buckets_lib.pad_frame_rows([feats[u] for u in chunk], frames, self.batch_size)
      rep = np.asarray(self._apply(self.params, jnp.asarray(x), jnp.asarray(m)), np.float64)
      self._memo.update({keys[u]: r for u, r in zip(chunk, rep)})
    rows = np.stack([self._memo[keys[u]] for u in ids])
    if self.with_stats:
      rows = np.concatenate([rows, classic.stats_features(feats, ids)], axis=1)
    return rows


def class_map(teacher_classes, corpus_classes) -> np.ndarray:
  """Teacher class index -> corpus class index (-1: no such corpus class)."""
  def canon(name):
    return SAME_CLASS.get(name.lower(), name.lower())
  target = {canon(c): i for i, c in enumerate(corpus_classes)}
  out = np.array([target.get(canon(c), -1) for c in teacher_classes])
  if (out < 0).all():
    raise ValueError(f"no teacher class ({', '.join(teacher_classes)}) matches a corpus class "
                     f"({', '.join(corpus_classes)})")
  return out


def zero_shot_fold(corpus, fold, normalize: str, feat: Featurizer) -> dict:
  """The distilled head's predictions on the fold's test speakers (argmax over the
  teacher classes the corpus has)."""
  if feat.level != "logits":
    raise ValueError("zero-shot scoring needs the student's logits (level 'logits')")
  mapping = class_map(feat.class_names, corpus.classes)
  feats = labelled.standardized(corpus, fold, fold.train, normalize)
  logits = feat(feats, fold.test)
  logits[:, mapping < 0] = -np.inf
  pred = mapping[logits.argmax(1)]
  y = np.array([corpus.labels[u] for u in fold.test])
  return metrics_lib.classification_report(y, pred, len(corpus.classes))


def zero_shot_report(student_dir: str, path: str, normalize: str, holdout,
                     num_folds: int = 6) -> str:
  corpus = labelled.load_corpus(path)
  folds = protocols.make_folds(corpus.records, "speaker_kfold", num_folds)
  feat = Featurizer(student_dir, "distilled", level="logits")
  mapping = class_map(feat.class_names, corpus.classes)
  unseen = [c for i, c in enumerate(corpus.classes) if i not in mapping]
  res = {f.name: zero_shot_fold(corpus, f, normalize, feat) for f in folds}
  return classic.format_report(
      f"Zero-shot: the distilled student's own head ({student_dir}; teacher classes "
      f"{', '.join(feat.class_names)} matched to {', '.join(corpus.classes)} by name"
      f"{'; never predicted: ' + ', '.join(unseen) if unseen else ''}), "
      f"{normalize}-standardised, no labelled speech; {corpus.path}, {len(folds)} speaker "
      "folds (test speakers).", res, holdout)


def main(argv) -> int:
  from absl import flags  # pylint: disable=import-outside-toplevel
  fv = flags.FlagValues()
  flags.DEFINE_list("init", ["distilled", "random"], "distilled, random and/or zero_shot "
                    "(the distilled head, no fitting)", flag_values=fv)
  flags.DEFINE_list("seeds", ["0"], "seeds of the random initialisations", flag_values=fv)
  flags.DEFINE_string("level", "pooled", "'pooled' (the classifier's input) or a hidden "
                      "state index (mean + std over frames)", flag_values=fv)
  flags.DEFINE_bool("with_stats", False, "append the input frames' utterance mean + std",
                    flag_values=fv)
  flags.DEFINE_enum("normalize", "speaker", ["speaker", "fold"], "feature standardisation",
                    flag_values=fv)
  flags.DEFINE_float("l2", 0.1, "L2 strength (the classic reference's)", flag_values=fv)
  flags.DEFINE_integer("folds", 6, "speaker folds", flag_values=fv)
  cli.define_report_flags(fv)
  usage = ("usage: python -m mced_jax.tools.probe STUDENT_DIR PREPARED_DIR "
           "[--init=distilled,random,zero_shot] "
           "[--seeds=0] [--level=pooled] [--with_stats] [--holdout=fold6] [--out=FILE]")
  args = cli.parse(fv, argv, usage, __doc__)
  if len(args) != 2:
    print(usage, file=sys.stderr)
    return 2
  blocks = []
  try:
    for init in fv.init:
      if init == "zero_shot":
        blocks.append(zero_shot_report(args[0], args[1], fv.normalize, cli.holdout(fv),
                                       fv.folds))
        continue
      for seed in (fv.seeds if init == "random" else ["0"]):
        feat = Featurizer(args[0], init, int(seed), fv.level, fv.with_stats)
        what = (f"Frozen student ({init}{', seed ' + seed if init == 'random' else ''}; "
                f"{args[0]}), level {fv.level}{' + utterance statistics' if fv.with_stats else ''}")
        blocks.append(classic.report(args[1], fv.normalize, fv.l2, cli.holdout(fv), fv.folds,
                                     feat, what))
  except (FileNotFoundError, ValueError) as e:  # no export / prepared corpus, bad level
    print(f"error: {e}", file=sys.stderr)
    return 2
  return cli.emit("\n".join(blocks), fv.out)


if __name__ == "__main__":
  sys.exit(main(sys.argv))
