"""Distillation input: `batches()` streams the global batch plan of prepared pairs
(or synthetic ones); the rest is what the teacher sees in the pairs, and the
paper's confidence-based pair selection (3.1.2: "we select the emotion salient utterances based on the
prediction probability").

`teacher_on_pairs` runs the frozen teacher over every pair's transcript once and
writes `<distill>/teacher_on_pairs.json`: the predicted class distribution, the
confidence (top softmax probability) quantiles, how many pairs each threshold
keeps, and per-utterance predictions (reused on resume). `select` keeps the pairs
whose confidence reaches `distill.min_teacher_confidence` (0 = all).
"""

from __future__ import annotations

import jax
import numpy as np
from absl import logging

from mced_jax.models import teacher as teacher_lib
from mced_jax.runtime import fs
from mced_jax.runtime import distributed
from mced_jax.runtime import sharding as shd

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def class_names(teacher) -> list[str]:
  """The teacher's class names in logit order (its id2label)."""
  return [teacher.config.id2label.get(i, str(i)) for i in range(teacher.config.num_labels)]


def summary(probs: np.ndarray, labels) -> dict:
  conf, pred = probs.max(-1), probs.argmax(-1)
  n = len(probs)
  return {
      "pairs": n,
      "predicted_class_share": {c: float((pred == i).mean()) for i, c in enumerate(labels)},
      "mean_probability": {c: float(probs[:, i].mean()) for i, c in enumerate(labels)},
      "confidence_quantiles": {q: float(np.quantile(conf, float(q)))
                               for q in ("0.1", "0.25", "0.5", "0.75", "0.9")},
      "kept_at_threshold": {str(t): int((conf >= t).sum()) for t in THRESHOLDS},
      "kept_class_share_at_0.6": {c: float(((pred == i) & (conf >= 0.6)).sum()
                                           / max(1, (conf >= 0.6).sum()))
                                  for i, c in enumerate(labels)},
  }


def teacher_on_pairs(dist, ds, rows, out_dir: str) -> dict:
  """{utt_id: (class index, confidence)} of the teacher on the pairs (index rows
  `rows`); cached. Token ids come from the index: no feature is read."""
  path = fs.join(out_dir, "teacher_on_pairs.json")
  recs = ds.records
  utts = [recs[int(i)]["utt_id"] for i in rows]
  if fs.exists(path):
    cached = fs.read_json(path)
    per = cached.get("per_utterance", {})
    if all(u in per for u in utts):
      return {u: tuple(v) for u, v in per.items()}
  ids = [ds.index.tokens(int(i)) for i in rows]
  labels = class_names(dist.teacher)
  n = dist.mesh.size  # a batch every device of the distillation mesh shares
  clf = teacher_lib.TeacherClassifier(
      dist.teacher.module, dist.teacher_params, None, labels, batch_size=-(-64 // n) * n,
      max_tokens=max(max(len(x) for x in ids), 1), mesh=dist.mesh, policy=dist.policy)
  probs = clf.softmax(clf.logits_of_ids(ids)[0])
  report = summary(probs, labels)
  report["labels"] = labels
  report["per_utterance"] = {u: [int(p.argmax()), round(float(p.max()), 5)]
                             for u, p in zip(utts, probs)}
  if jax.process_index() == 0:
    fs.write_json(path, report)
  distributed.barrier("teacher_on_pairs")  # the cache file exists for every host now
  logging.info("teacher on %d pairs: predicted %s; median confidence %.2f",
               len(rows), {k: round(v, 3) for k, v in report["predicted_class_share"].items()},
               report["confidence_quantiles"]["0.5"])
  return {u: tuple(v) for u, v in report["per_utterance"].items()}


def select(ds, rows, per_utterance: dict, min_confidence: float):
  """The index rows whose pair's teacher confidence reaches min_confidence (all
  when 0)."""
  if min_confidence <= 0:
    return rows
  recs = ds.records
  kept = np.array([i for i in rows if per_utterance[recs[int(i)]["utt_id"]][1] >= min_confidence],
                  np.int64)
  if not len(kept):
    raise ValueError(f"distill.min_teacher_confidence={min_confidence} keeps none of "
                     f"{len(rows)} pairs; see teacher_on_pairs.json for the quantiles")
  logging.info("pair selection: %d of %d pairs have teacher confidence >= %.2f",
               len(kept), len(rows), min_confidence)
  return kept


TARGETS = ("teacher", "shuffled", "labels")


def label_ids(index, rows, classes) -> np.ndarray:
  """Each pair's label (index rows `rows`) as an index into `classes` (the
  teacher's), -1 when it has none (e.g. LJSpeech pairs beside the demo's)."""
  names = [index.labels[c] if c >= 0 else "" for c in index.label[np.asarray(rows)]]
  where = {c: i for i, c in enumerate(classes)}
  bad = sorted({n for n in names if n and n not in where})
  if bad:
    raise ValueError(f"distill.targets='labels': pair labels {bad} are not among the "
                     f"student's classes {list(classes)}")
  out = np.array([where.get(n, -1) for n in names], np.int32)
  if not (out >= 0).any():
    raise ValueError("distill.targets='labels' needs labelled pairs (e.g. the demo corpus); "
                     "these pairs have no labels")
  return out


def batches(config, layout, mesh, vocab: int, select=None, classes=()):
  """(source name, start_step -> iterator of global batches for this process,
  feature (mean, std) of prepared data or None). `select(ds, rows)` may drop
  prepared pairs (teacher-confidence selection, by index row); `classes` (the
  student's) map pair labels for distill.targets='labels'."""
  d, b = config.data, config.distill.batch_size
  targets = config.distill.targets
  if targets not in TARGETS:
    raise ValueError(f"distill.targets={targets!r}; known: {', '.join(TARGETS)}")
  if targets != "teacher" and d.source != "prepared":
    raise ValueError(f"distill.targets={targets!r} needs prepared pairs (data.source=prepared)")
  shd.check_batch(b, mesh)
  rows = shd.host_rows(mesh, b)
  if d.source == "synthetic":
    from data_pipelines.synthetic import SyntheticPairs  # pylint: disable=import-outside-toplevel
    src = SyntheticPairs(b, d.max_frames, d.max_tokens,
                         vocab if config.teacher.source == "random" else 30522,
                         feature_dim=config.student.feature_dim, min_frames=d.min_frames,
                         min_tokens=d.min_tokens, seed=config.seed)
    name, stats = "synthetic", None
    stream = lambda start: ({k: v[rows] for k, v in src.global_batch_at(s).items()}
                            for s in range(start, 10 ** 12))
  elif d.source == "prepared":
    # Only here does distillation touch the data pipeline (prepared shards).
    from data_pipelines import batch_plan, buckets, dataset, loaders  # pylint: disable=import-outside-toplevel
    ds = dataset.PreparedDataset(layout.pairs(config))
    distributed.agree("dataset", f"{ds.path} fingerprint {ds.fingerprint()}",
                      "the prepared dataset at data.path")
    rows_of = ds.index.rows_of(d.split)
    rows_of = select(ds, rows_of) if select else rows_of
    if tuple(buckets.frame_buckets(d.frame_buckets, d.max_frames)) != tuple(ds.frame_buckets):
      logging.info("distill: frame buckets are fixed at preparation: %s (config asks %s)",
                   list(ds.frame_buckets), list(d.frame_buckets))
    text_of = batch_plan.derangement(len(rows_of), config.seed) if targets == "shuffled" else None
    labels = label_ids(ds.index, rows_of, classes) if targets == "labels" else None
    plan, loader, kind = loaders.make_loader(
        ds, rows_of, b, rows, seed=config.seed, max_frames=d.max_frames,
        max_tokens=d.max_tokens, reader=d.reader, threads=d.reader_threads,
        shuffle_buffer=d.shuffle_buffer, text_of=text_of, labels=labels)
    name, stream, stats = f"prepared:{ds.path}:{d.split}", loader.iterator, (ds.mean, ds.std)
    if targets != "teacher":
      name += f":{targets}"
    logging.info("distill: %d pairs of %s (%s, %s reader), %d slots x %d rows, groups %s, "
                 "%d steps per epoch, targets: %s", len(rows_of), ds.path, ds.format,
                 kind, plan.num_slots, plan.per_slot,
                 plan.groups, plan.steps_per_epoch, targets)
  else:
    raise ValueError(f"unknown data.source {d.source!r}; known: synthetic, prepared")

  def to_global(local):
    if local["features"].shape[-1] != config.student.feature_dim:
      raise ValueError(f"input features have {local['features'].shape[-1]} dims, the "
                       f"student expects {config.student.feature_dim} (IS16 LLD + deltas)")
    if local["input_ids"].size and local["input_ids"].max() >= vocab:  # jax would clamp
      raise ValueError(f"token id {int(local['input_ids'].max())} >= the teacher's vocab "
                       f"size {vocab}: data and teacher use different vocabularies")
    counts = {k: v for k, v in local.items() if k.startswith("count_")}
    arrays = {k: v for k, v in local.items() if not k.startswith("count_")}
    return {**shd.global_batch(arrays, rows, mesh), **counts}

  return name, lambda start: (to_global(local) for local in stream(start)), stats
