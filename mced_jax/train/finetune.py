"""Downstream fine-tuning of the student: one run = (variant, fold, seed).

A student initialised from scratch (Student-MCED) or from a distilled export
(Student+MCED, with a new classifier head) trains on the fold's training
speakers; after every epoch it is scored on the validation and test speakers, and
the epoch with the best validation metric (UAR, or WF1 for MELD) is the run's
result. Test scores never influence the choice. The loop, NaN guard, checkpoints
and resume are the training kit's; mced_jax/train/downstream.py runs the tables.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from data_pipelines import buckets as buckets_lib
from mced_jax.evaluation import labelled
from mced_jax.evaluation import metrics as metrics_lib
from mced_jax.evaluation import protocols
from mced_jax.kernels import precision
from mced_jax.models import export as export_lib
from mced_jax.models import student as student_lib
from mced_jax.runtime import fs
from mced_jax.runtime import sharding as shd
from mced_jax.train import kit

HEAD = ("fc_1", "fc_2")  # the classifier: always new when fine-tuning


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
    if name not in params or jax.tree.map(np.shape, params[name]) != jax.tree.map(np.shape, sub):
      got = jax.tree.map(np.shape, sub)
      raise ValueError(f"{init_dir}: layer {name!r} {got} does not fit this student "
                       f"({jax.tree.map(np.shape, params.get(name))}): set config.student to "
                       f"the distilled architecture {meta.get('student')}")
    out[name] = jax.tree.map(np.asarray, sub)
  return out


def train_run(config, corpus: labelled.Corpus, fold, seed: int, init_dir, fraction: float, mesh,
              run_dir: str, export_dir: str | None = None, export_meta=None) -> dict | None:
  """Trains (or resumes) one run in run_dir; returns its result (the best
  validation epoch's scores), or None when a stop signal interrupted it."""
  f = config.finetune
  policy, nc = precision.from_config(config), len(corpus.classes)
  student = student_lib.student_from_config(config.student, dtype=policy.module_dtype,
                                            num_classes=nc)
  train_ids = protocols.subsample(fold.train, corpus.labels, fraction, seed)
  feats = labelled.standardized(corpus, fold, train_ids, f.normalize)
  norm = feats.pop("__norm__", None)
  cw = jnp.asarray(labelled.class_weights([corpus.labels[u] for u in train_ids], nc,
                                          f.class_weighting))
  # A per-speaker-normalising student trains on batches of one-speaker groups.
  group = f.speaker_group if student.speaker_norm else 0
  speaker = labelled.speakers(corpus)
  plan = labelled.train_plan({u: len(x) for u, x in feats.items()}, train_ids, f.batch_size,
                             f.crop_frames, f.epochs, seed, speaker, group)
  spe = len(plan) // f.epochs  # every epoch has the same number of whole batches
  if spe == 0:
    raise ValueError(f"fold {fold.name}: {len(train_ids)} training utterances make no whole "
                     f"batch of {f.batch_size}"
                     + (f" in speaker groups of {group}" if group else ""))
  tx, schedule = kit.make_optimizer(
      learning_rate=f.learning_rate, total_steps=spe * f.epochs,
      warmup_steps=int(f.warmup_epochs * spe), b2=f.b2, weight_decay=f.weight_decay)
  spec = kit.state_spec(init_params(student, config.student.feature_dim, seed, init_dir), tx,
                        mesh)
  shd.check_batch(f.batch_size, mesh)
  rows, eval_rows = shd.host_rows(mesh, f.batch_size), shd.host_rows(mesh, f.eval_batch_size)

  def loss_fn(p, batch, rng):
    logits, _, _ = student.apply({"params": p}, batch["features"], batch["frame_mask"],
                                 train=True, rngs={"dropout": rng}, group_size=group)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    w = cw[batch["label"]] * batch["example_mask"]
    loss = (ce * w).sum() / jnp.maximum(w.sum(), 1e-9)
    return loss, {"loss": loss}

  buckets = labelled.frame_buckets(config)

  aug = f.augment

  def batches(start):
    for step, (idx, offs) in enumerate(plan[start:], start):
      xs = [feats[train_ids[i]][o: o + f.crop_frames] for i, o in zip(idx, offs)]
      frames = min(f.crop_frames, buckets_lib.bucket_for(max(len(x) for x in xs), buckets))
      x, m = buckets_lib.pad_frame_rows(xs, frames, f.batch_size)
      if aug.time_masks or aug.feature_masks:  # seeded per step: resume-stable
        x = labelled.mask_augment(x, m, np.random.default_rng([seed, step]), aug.time_masks,
                                  aug.time_width, aug.feature_masks, aug.feature_width)
      y = np.array([corpus.labels[train_ids[i]] for i in idx], np.int32)
      yield shd.global_batch({"features": x[rows], "frame_mask": m[rows], "label": y[rows],
                              "example_mask": np.ones(len(rows), bool)}, rows, mesh)

  predict = kit.eval_fn(lambda p, x, m: jax.nn.softmax(
      student.apply({"params": p}, x, m)[0], -1), mesh, policy)
  pooled_fn = kit.eval_fn(functools.partial(student_lib.pooled_vector, student), mesh, policy)
  head_fn = kit.eval_fn(functools.partial(student_lib.head_probs, student), mesh, policy)

  def batched(fn, params, order):
    """fn(params, x, m) over `order` in eval batches (frame buckets); rows in order."""
    out = []
    for s in range(0, len(order), f.eval_batch_size):
      chunk = order[s: s + f.eval_batch_size]
      frames = buckets_lib.bucket_for(len(feats[chunk[-1]]), buckets)
      x, m = buckets_lib.pad_frame_rows([feats[u] for u in chunk], frames, f.eval_batch_size)
      g = shd.global_batch({"x": x[eval_rows], "m": m[eval_rows]}, eval_rows, mesh)
      out.append(np.asarray(fn(params, g["x"], g["m"]))[: len(chunk)])
    return np.concatenate(out)

  def scores(params, ids):
    order = sorted(ids, key=lambda u: len(feats[u]))
    if student.speaker_norm:  # the encoder once; each speaker's statistics over all of
      pooled = batched(pooled_fn, params, order).astype(np.float32)  # its utterances
      st = student_lib.speaker_pooled_stats(pooled, [speaker[u] for u in order])
      probs = np.asarray(head_fn(params, pooled, st))
    else:
      probs = batched(predict, params, order)
    y = np.array([corpus.labels[u] for u in order])
    return metrics_lib.classification_report(y, probs.argmax(-1), nc), order, probs

  def evaluate(state, step, meta, means):
    val, _, _ = scores(state.params, fold.validation)
    test, order, probs = scores(state.params, fold.test)
    epoch = step // spe
    meta["history"].append({"epoch": epoch, "train_loss": means.get("loss", float("nan")),
                            **{f"val_{k}": v for k, v in val.items() if k != "n"},
                            **{f"test_{k}": v for k, v in test.items() if k != "n"}})
    best = meta.get("best")
    if best is None or val[f.select_metric] > best["val"][f.select_metric]:
      meta["best"] = {"epoch": epoch, "val": val, "test": test, "test_ids": order,
                      "test_probs": probs.round(5).tolist()}
      if export_dir:
        export_lib.save(export_dir, state.params, dict(
            export_meta or {}, feature_mean=norm[0].tolist() if norm else None,
            feature_std=norm[1].tolist() if norm else None, normalize=f.normalize,
            val=val, test=test))
    out = {"epoch": epoch, "val_" + f.select_metric: val[f.select_metric]}
    if f.patience and epoch - meta["best"]["epoch"] >= f.patience:
      out["early_stop"] = True  # no better validation epoch for `patience` epochs
    return out

  loop = kit.LoopConfig(num_steps=spe * f.epochs, log_every=spe, checkpoint_every=spe,
                        keep_checkpoints=1, eval_every=spe, on_nonfinite=f.on_nonfinite,
                        examples_per_step=f.batch_size, progress=False)
  with jax.set_mesh(mesh):
    res = kit.run(f"finetune {fold.name} seed {seed}", step_fn=kit.make_train_step(
        loss_fn, tx, schedule, mesh=mesh, state_shardings=spec.shardings, policy=policy,
        rng_seed=seed), spec=spec, batches=batches, config=loop,
        checkpoint_dir=fs.join(run_dir, "checkpoints"), metrics_dir=run_dir, evaluate=evaluate,
        meta={"history": []})
  if res.status != "done":
    return None
  best = res.meta["best"]
  return {"fold": fold.name, "seed": seed, "classes": list(corpus.classes),
          "train_utterances": len(train_ids), "best_epoch": best["epoch"],
          "select_metric": f.select_metric, "val": best["val"], "test": best["test"],
          "test_ids": best["test_ids"], "test_probs": best["test_probs"],
          "test_true": [corpus.labels[u] for u in best["test_ids"]],
          "history": res.meta["history"],
          "nonfinite_steps": int(jax.device_get(res.state.nonfinite_steps))}
