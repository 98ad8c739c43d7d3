"""Teacher stage 3: fine-tune BERT on the 5-class Teacher Text Emotion Dataset.

Starts from a local HF BERT directory (MiniLM by default, or the stage-2 MLM
output), trains with length-bucketed batches, evaluates validation weighted F1
after every epoch and keeps the best epoch's weights as an HF directory
(`WORKDIR/teacher_cls/model`, with the label map) -- the directory distillation
loads. Then reports test WA/WF1 with a confusion matrix (PNG + text), and, when the
MELD CSV is available, WF1 on MELD test text restricted to the 5 shared classes.
Resumable per epoch; skipped when its results already exist.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from mced_jax import checkpoint as ckpt_lib
from mced_jax import metrics
from mced_jax import sharding as shd
from mced_jax.train import text_common as tc

CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger")
MELD_TO_TEACHER = {"neutral": "neutral", "joy": "happiness", "surprise": "surprise",
                   "sadness": "sadness", "anger": "anger"}


def resolve_init(c, workdir: str | None = None) -> str:
  """'minilm', 'mlm' (this work dir's stage-2 output) or a local BERT directory."""
  if c.init == "mlm":
    if workdir is None:
      raise ValueError("init='mlm' needs the run's work dir")
    path = os.path.join(os.path.dirname(workdir), "teacher_mlm", "model")
    if not os.path.exists(os.path.join(path, "config.json")):
      raise FileNotFoundError(f"init='mlm' but {path} has no model: run the teacher_mlm "
                              "stage first (--config.stages=teacher_mlm,teacher_cls)")
    return path
  if c.init == "minilm":
    from mced_jax.models.teacher import default_teacher_dir  # pylint: disable=import-outside-toplevel
    return default_teacher_dir()
  if not os.path.exists(os.path.join(c.init, "config.json")):
    raise FileNotFoundError(f"teacher_cls.init={c.init!r}: not a Hugging Face model directory "
                            "(no config.json); use 'minilm' or a local BERT directory")
  return c.init


def demo_text_splits(manifest: str, out_dir: str) -> None:
  """train/validation/test.jsonl from the demo corpus's labelled transcripts."""
  import csv  # pylint: disable=import-outside-toplevel
  os.makedirs(out_dir, exist_ok=True)
  with open(manifest, encoding="utf-8", newline="") as f:
    rows = list(csv.DictReader(f))
  for split in ("train", "validation", "test"):
    with open(os.path.join(out_dir, f"{split}.jsonl"), "w", encoding="utf-8") as f:
      for r in rows:
        if r["split"] == split and r["label"] in CLASSES:
          f.write(json.dumps({"text": r["text"], "label": r["label"]}) + "\n")


def load_splits(c, workdir: str) -> dict:
  """{split: (texts, label ids)} from JSONL files (data_pipelines.adapters.text)."""
  data_dir = c.data_dir
  if not data_dir:
    data_dir = os.path.join(workdir, "teacher_text")
    if not os.path.exists(os.path.join(data_dir, "train.jsonl")):
      from data_pipelines.adapters import text as text_lib  # pylint: disable=import-outside-toplevel
      missing = [p for p in (c.xed_dir, c.emotionlines_dir) if not os.path.isdir(p)]
      demo_manifest = os.path.join(workdir, "data", "demo_corpus", "manifest.csv")
      if missing and os.path.exists(demo_manifest):
        from absl import logging  # pylint: disable=import-outside-toplevel
        logging.warning("teacher_cls: %s not found; fine-tuning the teacher on the demo "
                        "corpus's own transcripts instead (a plumbing demo)", missing)
        demo_text_splits(demo_manifest, data_dir)
      elif missing:
        raise FileNotFoundError(f"teacher text corpus {missing[0]} not found; set "
                                "--config.teacher_cls.xed_dir/emotionlines_dir or data_dir")
      else:
        text_lib.write_jsonl(
            text_lib.teacher_text_dataset(c.xed_dir, c.emotionlines_dir, c.seed), data_dir)
  out = {}
  for split in ("train", "validation", "test"):
    path = os.path.join(data_dir, f"{split}.jsonl")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} not found (expected train/validation/test.jsonl)")
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
      for i, line in enumerate(f, 1):
        if not line.strip():
          continue
        row = json.loads(line)
        if row["label"] not in CLASSES:
          raise ValueError(f"{path}:{i}: unknown label {row['label']!r}")
        texts.append(row["text"])
        labels.append(CLASSES.index(row["label"]))
    cap = c.max_train_examples if split == "train" else c.max_eval_examples
    if 0 < cap < len(texts):  # a seeded random subset: the files are sorted by text
      keep = np.sort(np.random.default_rng(c.seed).permutation(len(texts))[:cap])
      texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    out[split] = (texts, np.asarray(labels, np.int32))
  return out


def meld_test_text(path: str):
  """MELD test utterances whose emotion is one of the teacher's 5 classes."""
  import csv  # pylint: disable=import-outside-toplevel
  from data_pipelines.tokenize import clean_text  # pylint: disable=import-outside-toplevel
  texts, labels = [], []
  with open(path, encoding="utf-8", errors="replace", newline="") as f:
    for row in csv.DictReader(f):
      lab = MELD_TO_TEACHER.get(row["Emotion"].strip().lower())
      if lab:
        texts.append(clean_text(row["Utterance"]))
        labels.append(CLASSES.index(lab))
  return texts, np.asarray(labels, np.int32)


class Classifier:
  """Batched logits of a FlaxBert classifier over a mesh (used for evaluation and
  teacher inference)."""

  def __init__(self, module, params, tokenizer, mesh, batch_size: int, max_tokens: int,
               buckets=(16, 32, 64)):
    self.module, self.params, self.tok, self.mesh = module, params, tokenizer, mesh
    self.batch_size, self.max_tokens = batch_size, max_tokens
    self.buckets = tuple(b for b in buckets if b < max_tokens) + (max_tokens,)

    def fwd(params, ids, mask):
      pos = jnp.broadcast_to(jnp.arange(ids.shape[1])[None], ids.shape)
      return module.apply({"params": params}, ids, mask, jnp.zeros_like(ids), pos, None,
                          deterministic=True).logits.astype(jnp.float32)

    self._fwd = jax.jit(fwd)

  def logits(self, texts) -> np.ndarray:
    ids = tc.encode(self.tok, texts, self.max_tokens)
    out = np.zeros((len(ids), self.module.config.num_labels), np.float32)
    with jax.set_mesh(self.mesh):
      for idx, length in tc.bucket_batches(ids, self.batch_size, self.buckets, None):
        b = tc.pad_batch(ids, idx, length, self.batch_size)
        g = shd.global_batch({k: b[k] for k in ("input_ids", "attention_mask")}, self.mesh)
        out[idx] = np.asarray(self._fwd(self.params, g["input_ids"], g["attention_mask"]))[
            : len(idx)]
    return out


def evaluate(clf: Classifier, texts, labels) -> tuple[dict, np.ndarray]:
  pred = clf.logits(texts).argmax(-1)
  return (metrics.classification_report(labels, pred, len(CLASSES)),
          metrics.confusion_matrix(labels, pred, len(CLASSES)))


def train(config, workdir: str) -> dict:
  c = config.teacher_cls
  done, results_path, model_dir = tc.finished_results(workdir, "teacher_cls")
  if done is not None:
    return done
  from transformers import FlaxBertForSequenceClassification  # pylint: disable=import-outside-toplevel
  from data_pipelines.tokenize import WordPiece  # pylint: disable=import-outside-toplevel
  init_dir = resolve_init(c, workdir)
  tok = WordPiece(os.path.join(init_dir, "vocab.txt"), max_tokens=c.max_tokens)
  data = load_splits(c, os.path.dirname(workdir))
  model = FlaxBertForSequenceClassification.from_pretrained(
      init_dir, num_labels=len(CLASSES), local_files_only=True, seed=c.seed,
      id2label=dict(enumerate(CLASSES)), label2id={n: i for i, n in enumerate(CLASSES)})
  module, bert_cfg = model.module, model.config
  mesh = shd.make_mesh(config.mesh.data, config.mesh.model)
  shd.check_batch_divisible(c.batch_size, mesh)
  buckets = tuple(b for b in c.buckets if b < c.max_tokens) + (c.max_tokens,)
  train_ids = tc.encode(tok, data["train"][0], c.max_tokens)
  train_y = data["train"][1]
  steps_per_epoch = len(tc.bucket_batches(train_ids, c.batch_size, buckets, 0))
  total = steps_per_epoch * c.epochs
  tx, sched = tc.adamw(c.learning_rate, total, int(c.warmup_ratio * total), c.weight_decay)
  state, state_sh = tc.init_state(model.params, tx, mesh)
  del model

  def loss_fn(params, batch, rng):
    ids = batch["input_ids"]
    pos = jnp.broadcast_to(jnp.arange(ids.shape[1])[None], ids.shape)
    logits = module.apply({"params": params}, ids, batch["attention_mask"],
                          jnp.zeros_like(ids), pos, None, deterministic=False,
                          rngs={"dropout": rng}).logits.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    w = batch["weight"]
    loss = (ce * w).sum() / jnp.maximum(w.sum(), 1.0)
    acc = ((logits.argmax(-1) == batch["label"]) * w).sum() / jnp.maximum(w.sum(), 1.0)
    return loss, {"loss": loss, "acc": acc}

  step = tc.make_step(loss_fn, tx, mesh, state_sh, c.seed)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=1)
  meta = {"epoch": 0, "best_wf1": -1.0, "best_epoch": -1, "history": []}
  if ckpt.latest_step() is not None:
    state, meta = ckpt.restore(tc.restore_target(state, state_sh))
    logging.info("teacher_cls: resuming after epoch %d (best val WF1 %.4f at epoch %d)",
                 meta["epoch"], meta["best_wf1"], meta["best_epoch"])
  writer = metrics.MetricWriter(workdir)
  last_epoch = c.epochs if c.stop_after_epoch < 0 else min(c.epochs, c.stop_after_epoch)
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  for epoch in range(meta["epoch"] + 1, last_epoch + 1):
    batches = tc.bucket_batches(train_ids, c.batch_size, buckets, c.seed + epoch)
    t0, losses = time.perf_counter(), []
    with jax.set_mesh(mesh):
      for idx, length in tqdm(batches, desc=f"teacher_cls epoch {epoch}/{c.epochs}",
                              disable=jax.process_index() != 0, dynamic_ncols=True):
        b = tc.pad_batch(train_ids, idx, length, c.batch_size, {"label": train_y})
        state, aux = step(state, shd.global_batch(b, mesh))
        losses.append(aux["loss"])
    train_loss = float(np.mean(jax.device_get(losses)))
    clf = Classifier(module, state.params, tok, mesh, c.eval_batch_size, c.max_tokens, buckets)
    val, _ = evaluate(clf, *data["validation"])
    rec = {"epoch": epoch, "train_loss": train_loss, "val_WA": val["WA"], "val_WF1": val["WF1"],
           "epoch_s": time.perf_counter() - t0}
    logging.info("teacher_cls: %s", rec)
    writer.write(int(jax.device_get(state.step)), rec)
    meta["history"].append(rec)
    if val["WF1"] > meta["best_wf1"]:
      meta["best_wf1"], meta["best_epoch"] = val["WF1"], epoch
      if jax.process_index() == 0:
        tc.save_hf(FlaxBertForSequenceClassification, bert_cfg, state.params, model_dir,
                   tok.vocab_path)
    meta["epoch"] = epoch
    ckpt.save(epoch, state, meta, force=True)
    ckpt.wait()
  ckpt.close()
  if meta["epoch"] < c.epochs:
    logging.info("teacher_cls: stopped after epoch %d of %d (stop_after_epoch)", meta["epoch"],
                 c.epochs)
    return {"stopped_after_epoch": meta["epoch"]}
  # Test with the selected epoch's weights, read back from the saved directory.
  best = FlaxBertForSequenceClassification.from_pretrained(model_dir, local_files_only=True)
  clf = Classifier(best.module, best.params, tok, mesh, c.eval_batch_size, c.max_tokens, buckets)
  test, cm = evaluate(clf, *data["test"])
  results = {"init": init_dir, "best_epoch": meta["best_epoch"], "val_WF1": meta["best_wf1"],
             "test": test, "history": meta["history"], "classes": list(CLASSES)}
  if c.meld_test_csv and os.path.exists(c.meld_test_csv):
    meld, meld_cm = evaluate(clf, *meld_test_text(c.meld_test_csv))
    results["meld_test_5class"] = meld
    results["meld_confusion"] = meld_cm.tolist()
  results["test_confusion"] = cm.tolist()
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "confusion.txt"), "w", encoding="utf-8") as f:
      f.write(metrics.confusion_text(cm, CLASSES) + "\n")
    metrics.plot_confusion(cm, CLASSES, os.path.join(workdir, "confusion.png"),
                           f"teacher test: WA {test['WA']:.3f}, WF1 {test['WF1']:.3f}")
    with open(results_path, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)
  logging.info("teacher_cls: test WA %.4f WF1 %.4f (best epoch %d)%s", test["WA"], test["WF1"],
               meta["best_epoch"],
               f"; MELD test (5 classes) WF1 {results['meld_test_5class']['WF1']:.4f}"
               if "meld_test_5class" in results else "")
  print("teacher test confusion matrix:\n" + metrics.confusion_text(cm, CLASSES))
  return results
