"""Downstream fine-tuning and evaluation of the student (paper 3.2-3.4).

One *run* = (variant, fold, seed): a student initialised from scratch
(Student-MCED) or from a distilled export (Student+MCED, with a new classifier
head) is trained on the fold's training speakers; after every epoch it is scored
on the validation speakers and the test speakers, and the epoch with the best
validation metric (UAR, or WF1 for MELD) is the run's result. Test scores never
influence the choice. Runs are cached as JSON, so a re-run skips finished runs.

The labelled corpus is a prepared dataset (python -m data_pipelines.prepare):
its `records.jsonl` and cached raw IS16 features are read into memory (no
TensorFlow), and standardised with the statistics of each fold's training
utterances (as a classic pipeline would).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from mced_jax import export as export_lib
from mced_jax import metrics as metrics_lib
from mced_jax import protocols
from mced_jax import sharding as shd
from mced_jax.models import matmul as matmul_lib
from mced_jax.models import student as student_lib
from mced_jax.train import distill
from mced_jax.train import text_common as tc

HEAD = ("fc_1", "fc_2")  # the classifier: always new when fine-tuning


# ---------------------------------------------------------------- data
@dataclasses.dataclass
class Corpus:
  records: list  # dicts from records.jsonl, labelled ones only
  features: dict  # utt_id -> raw float32 [T, 130]
  classes: tuple
  labels: dict  # utt_id -> class index
  path: str


def corpus_classes(path: str, records, requested=()) -> tuple:
  if requested:
    return tuple(requested)
  report = os.path.join(path, "report.json")
  if os.path.exists(report):
    with open(report, encoding="utf-8") as f:
      labels = json.load(f).get("labels")
    if labels:
      return tuple(labels)
  return tuple(sorted({r["label"] for r in records if r.get("label")}))


def load_corpus(path: str, classes=()) -> Corpus:
  """Labelled utterances of a prepared dataset with their raw features."""
  rec_path = os.path.join(path, "records.jsonl")
  if not os.path.exists(rec_path):
    raise FileNotFoundError(f"{path}: no records.jsonl; prepare the labelled corpus with "
                            "python -m data_pipelines.prepare (or the `data` stage) first")
  with open(rec_path, encoding="utf-8") as f:
    records = [json.loads(line) for line in f if line.strip()]
  classes = corpus_classes(path, records, classes)
  if len(classes) < 2:
    raise ValueError(f"{path}: fine-tuning needs >= 2 classes, found {list(classes)}")
  from data_pipelines.features import feature_path  # pylint: disable=import-outside-toplevel
  kept, feats, labels, unlabelled = [], {}, {}, 0
  for r in records:
    if r.get("label") not in classes:
      unlabelled += 1
      continue
    fp = feature_path(os.path.join(path, "features"), r["utt_id"])
    try:
      x = np.load(fp).astype(np.float32)
    except (OSError, ValueError) as e:
      raise IOError(f"{fp}: cannot read the cached features of {r['utt_id']} ({e}); "
                    "re-run the preparation") from e
    kept.append(r)
    feats[r["utt_id"]] = x
    labels[r["utt_id"]] = classes.index(r["label"])
  if not kept:
    raise ValueError(f"{path}: no utterance has a label in {list(classes)}")
  if unlabelled:
    logging.info("finetune: %d utterances without a label in %s left out", unlabelled,
                 list(classes))
  return Corpus(kept, feats, classes, labels, path)


def fold_stats(corpus: Corpus, ids) -> tuple[np.ndarray, np.ndarray]:
  """Frame-weighted mean/std over the training utterances."""
  x = np.concatenate([corpus.features[u] for u in ids], 0).astype(np.float64)
  mean, std = x.mean(0), x.std(0)
  return mean.astype(np.float32), np.where(std < 1e-6, 1.0, std).astype(np.float32)


def make_batch(xs, ys, frames: int, batch_size: int) -> dict:
  """Pads/truncates to `frames` and to `batch_size` rows (example_mask marks real rows)."""
  feats = np.zeros((batch_size, frames, xs[0].shape[1]), np.float32)
  mask = np.zeros((batch_size, frames), bool)
  for i, x in enumerate(xs):
    n = min(len(x), frames)
    feats[i, :n], mask[i, :n] = x[:n], True
  label = np.zeros((batch_size,), np.int32)
  label[: len(ys)] = ys
  ex = np.zeros((batch_size,), bool)
  ex[: len(xs)] = True
  return {"features": feats, "frame_mask": mask, "label": label, "example_mask": ex}


def bucket_for(n: int, buckets) -> int:
  """The smallest bucket holding n frames (the largest if none does)."""
  buckets = sorted(buckets)
  return next((b for b in buckets if b >= n), buckets[-1])


def standardize(corpus: Corpus, ids, norm) -> dict:
  """utt_id -> standardised features, computed once per run (not every epoch)."""
  mean, std = norm
  return {u: (corpus.features[u] - mean) / std for u in ids}


def train_batches(feats, labels, ids, batch_size, crop, rng, buckets=()):
  """One epoch of shuffled batches; utterances longer than `crop` frames get a
  random `crop`-frame window (augmentation). A batch is padded to the smallest
  bucket that holds it, at most `crop`: few static shapes, little padding."""
  order = rng.permutation(len(ids))
  for s in range(0, len(order) - batch_size + 1, batch_size):  # drop the remainder
    xs, ys = [], []
    for i in order[s: s + batch_size]:
      x = feats[ids[i]]
      if len(x) > crop:
        o = rng.integers(0, len(x) - crop + 1)
        x = x[o: o + crop]
      xs.append(x)
      ys.append(labels[ids[i]])
    longest = max(len(x) for x in xs)
    frames = min(crop, bucket_for(longest, buckets)) if buckets else crop
    yield make_batch(xs, ys, frames, batch_size)


def eval_batches(feats, labels, ids, batch_size, buckets):
  """Whole utterances, sorted by length, padded to the smallest fitting bucket
  (longer ones are truncated to the largest)."""
  order = sorted(ids, key=lambda u: len(feats[u]))
  for s in range(0, len(order), batch_size):
    chunk = order[s: s + batch_size]
    frames = bucket_for(len(feats[chunk[-1]]), buckets)
    yield chunk, make_batch([feats[u] for u in chunk], [labels[u] for u in chunk], frames,
                            batch_size)


# ---------------------------------------------------------------- model
def init_params(student, feature_dim: int, seed: int, init_dir: str | None):
  """Fresh parameters; with `init_dir`, everything but the classifier head comes
  from the distilled student there."""
  params = student.init(jax.random.PRNGKey(seed), jnp.zeros((1, 16, feature_dim)),
                        jnp.ones((1, 16), bool))["params"]
  params = jax.tree.map(np.asarray, params)
  if not init_dir:
    return params
  pre, meta = export_lib.load(init_dir)
  out = dict(params)
  for name, sub in pre.items():
    if name in HEAD:
      continue
    if name not in params:
      raise ValueError(f"{init_dir}: layer {name!r} is not in this student; the distilled "
                       f"student's architecture is {meta.get('student')}")
    want = jax.tree.map(np.shape, params[name])
    got = jax.tree.map(np.shape, sub)
    if want != got:
      raise ValueError(f"{init_dir}: layer {name!r} has shapes {got}, this student "
                       f"{want}: set config.student to the distilled architecture "
                       f"{meta.get('student')}")
    out[name] = jax.tree.map(np.asarray, sub)
  return out


def class_weights(labels, num_classes: int, mode: str) -> np.ndarray:
  if mode == "none":
    return np.ones(num_classes, np.float32)
  if mode != "balanced":
    raise ValueError(f"finetune.class_weighting must be 'balanced' or 'none', got {mode!r}")
  counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
  w = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
  return w.astype(np.float32)


@dataclasses.dataclass
class RunSpec:
  variant: str  # a display name, e.g. "Student+MCED"
  init_dir: str | None  # distilled student export, or None (from scratch)
  fraction: float = 1.0  # of the training utterances (Table 7)

  @property
  def key(self) -> str:
    """Directory name of the run cache: same init + fraction = same runs."""
    init = "scratch" if not self.init_dir else os.path.basename(
        os.path.dirname(os.path.abspath(self.init_dir))) + "-" + _short_hash(self.init_dir)
    return f"{init}_frac{self.fraction:.3g}"


def _short_hash(s: str) -> str:
  return hashlib.sha1(os.path.abspath(s).encode()).hexdigest()[:8]


def train_run(config, corpus: Corpus, fold: protocols.Fold, seed: int, spec: RunSpec,
              mesh, export_dir: str | None = None) -> dict:
  """Trains one run; returns its result (best-validation epoch's scores)."""
  f = config.finetune
  dtype = distill.compute_dtype(config.dtype)
  impl = matmul_lib.implementation(config.matmul, dtype)  # as in distillation
  nc = len(corpus.classes)
  student = student_lib.student_from_config(
      config.student, dtype=matmul_lib.module_dtype(impl, dtype), matmul=impl).clone(
          num_classes=nc)
  train_ids = protocols.subsample(fold.train, corpus.labels, spec.fraction, seed)
  norm = fold_stats(corpus, train_ids)
  feats = standardize(corpus, train_ids + fold.validation + fold.test, norm)
  cw = jnp.asarray(class_weights([corpus.labels[u] for u in train_ids], nc,
                                 f.class_weighting))
  steps_per_epoch = len(train_ids) // f.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"fold {fold.name}: {len(train_ids)} training utterances < batch size "
                     f"{f.batch_size}")
  total = steps_per_epoch * f.epochs
  tx, _ = tc.adamw(f.learning_rate, total, int(f.warmup_epochs * steps_per_epoch),
                   f.weight_decay)
  params = init_params(student, config.student.feature_dim, seed, spec.init_dir)
  state, state_sh = tc.init_state(params, tx, mesh)

  def loss_fn(p, batch, rng):
    logits, _, _ = student.apply({"params": p}, batch["features"], batch["frame_mask"],
                                 train=True, rngs={"dropout": rng})
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    w = cw[batch["label"]] * batch["example_mask"]
    loss = (ce * w).sum() / jnp.maximum(w.sum(), 1e-9)
    return loss, {"loss": loss}

  step = tc.make_step(loss_fn, tx, mesh, state_sh, seed)

  @jax.jit
  def predict(p, batch):
    logits, _, _ = student.apply({"params": p}, batch["features"], batch["frame_mask"])
    return jax.nn.softmax(logits, -1)

  def evaluate(p, ids):
    probs, order = [], []
    for chunk, batch in eval_batches(feats, corpus.labels, ids, f.eval_batch_size,
                                     config.data.frame_buckets):
      batch = shd.global_batch({k: batch[k] for k in ("features", "frame_mask")}, mesh)
      probs.append(np.asarray(predict(p, batch))[: len(chunk)])
      order += chunk
    probs = np.concatenate(probs)
    y = np.array([corpus.labels[u] for u in order])
    return metrics_lib.classification_report(y, probs.argmax(-1), nc), order, probs

  rng = np.random.default_rng(seed)
  history, best, best_params = [], None, None
  select = f.select_metric
  t0 = time.perf_counter()
  with jax.set_mesh(mesh):
    for epoch in range(1, f.epochs + 1):
      losses = []
      for batch in train_batches(feats, corpus.labels, train_ids, f.batch_size,
                                 f.crop_frames, rng, config.data.frame_buckets):
        state, aux = step(state, shd.global_batch(batch, mesh))
        losses.append(aux["loss"])
      train_loss = float(np.mean(jax.device_get(losses)))
      if not np.isfinite(train_loss):
        raise FloatingPointError(f"fold {fold.name} seed {seed}: non-finite training loss at "
                                 f"epoch {epoch}; lower finetune.learning_rate")
      val, _, _ = evaluate(state.params, fold.validation)
      test, order, probs = evaluate(state.params, fold.test)
      history.append({"epoch": epoch, "train_loss": train_loss,
                      **{f"val_{k}": v for k, v in val.items() if k != "n"},
                      **{f"test_{k}": v for k, v in test.items() if k != "n"}})
      if best is None or val[select] > best["val"][select]:
        best = {"epoch": epoch, "val": val, "test": test,
                "test_ids": order, "test_probs": probs.round(5).tolist()}
        if export_dir:
          best_params = jax.device_get(state.params)
  result = {
      "variant": spec.variant, "init": spec.init_dir, "fraction": spec.fraction,
      "fold": fold.name, "seed": seed, "classes": list(corpus.classes),
      "train_utterances": len(train_ids), "best_epoch": best["epoch"],
      "select_metric": select, "val": best["val"], "test": best["test"],
      "test_ids": best["test_ids"], "test_probs": best["test_probs"],
      "test_true": [corpus.labels[u] for u in best["test_ids"]],
      "history": history, "seconds": time.perf_counter() - t0,
  }
  if export_dir:
    export_lib.save(export_dir, best_params, {
        "kind": "emotion_classifier", "student": {
            **export_lib.student_dict(config.student), "num_classes": nc},
        "classes": list(corpus.classes), "feature_mean": norm[0].tolist(),
        "feature_std": norm[1].tolist(), "frame_buckets": list(config.data.frame_buckets),
        "variant": spec.variant, "fold": fold.name, "seed": seed, "corpus": corpus.path,
        "val": best["val"], "test": best["test"]})
  return result


# ---------------------------------------------------------------- many runs
def fingerprint(config, corpus: Corpus, protocol: str) -> str:
  """Runs are cached per fine-tuning setup: a changed hyperparameter, architecture,
  corpus or protocol starts a fresh cache instead of mixing results."""
  f = config.finetune
  setup = {"finetune": {k: f[k] for k in ("epochs", "batch_size", "learning_rate",
                                          "weight_decay", "warmup_epochs", "crop_frames",
                                          "class_weighting", "select_metric")},
           "student": export_lib.student_dict(config.student), "dtype": config.dtype,
           "corpus": os.path.abspath(corpus.path), "classes": list(corpus.classes),
           "protocol": protocol, "buckets": list(config.data.frame_buckets)}
  return hashlib.sha1(json.dumps(setup, sort_keys=True).encode()).hexdigest()[:10]


def run_path(cache_dir: str, spec: RunSpec, fold: protocols.Fold, seed: int) -> str:
  return os.path.join(cache_dir, spec.key, fold.name, f"seed{seed}.json")


def run_all(config, corpus: Corpus, folds, specs, seeds, cache_dir: str,
            export: dict | None = None) -> list[dict]:
  """Every (spec, fold, seed) run, reusing the ones cached in `cache_dir`.
  `export` maps a variant name to the directory its first fold/seed's model is
  exported to."""
  mesh = shd.make_mesh(config.mesh.data, config.mesh.model)
  for b in (config.finetune.batch_size, config.finetune.eval_batch_size):
    shd.check_batch_divisible(b, mesh)
  export = export or {}
  jobs = [(s, f, seed) for s in specs for f in folds for seed in seeds]
  results, todo = [], []
  for s, f, seed in jobs:
    p = run_path(cache_dir, s, f, seed)
    first = f is folds[0] and seed == seeds[0]
    need_export = first and s.variant in export and not export_lib.exists(export[s.variant])
    if os.path.exists(p) and not need_export:
      with open(p, encoding="utf-8") as fh:
        r = json.load(fh)
      # A cached run is keyed by init + fraction; its name is this table's.
      r["variant"] = s.variant
      results.append(r)
    else:
      todo.append((s, f, seed, export[s.variant] if first and s.variant in export else None))
  if results:
    logging.info("finetune: %d of %d runs already done (cached in %s)", len(results),
                 len(jobs), cache_dir)
  bar = None
  if todo and jax.process_index() == 0:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm(total=len(todo), desc="finetune runs", unit="run", dynamic_ncols=True)
  for s, f, seed, exp in todo:
    r = train_run(config, corpus, f, seed, s, mesh, export_dir=exp)
    p = run_path(cache_dir, s, f, seed)
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(p), exist_ok=True)
      with open(p + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(r, fh)
      os.replace(p + ".tmp", p)
    logging.info("finetune: %s %s seed %d: best epoch %d, test WA %.3f UAR %.3f WF1 %.3f "
                 "(%.0f s)", s.variant, f.name, seed, r["best_epoch"], r["test"]["WA"],
                 r["test"]["UAR"], r["test"]["WF1"], r["seconds"])
    results.append(r)
    if bar is not None:
      bar.update(1)
      bar.set_postfix(last=f"{s.variant} {f.name} UAR {r['test']['UAR']:.3f}", refresh=False)
  if bar is not None:
    bar.close()
  return results
