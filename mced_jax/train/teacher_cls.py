"""Teacher stage 3: fine-tune BERT on the 5-class Teacher Text Emotion Dataset.

Starts from a local HF BERT directory (MiniLM by default, or the stage-2 MLM
output), trains with length-bucketed batches, evaluates validation weighted F1
after every epoch and keeps the best epoch's weights as an HF directory
(`WORKDIR/teacher_cls/model`, with the label map) -- the directory distillation
loads. Then reports test WA/WF1 with a confusion matrix (PNG + text), and, when the
MELD CSV is available, WF1 on MELD test text restricted to the 5 shared classes.
The loop, checkpoints (every epoch; resumable mid-epoch) and NaN guard are the
training kit's; the stage is skipped when its results exist.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from data_pipelines import buckets as buckets_lib
from data_pipelines.adapters import text as text_lib
from mced_jax.evaluation import metrics
from mced_jax.models import export as export_lib
from mced_jax.models import teacher as teacher_lib
from mced_jax.runtime import distributed
from mced_jax.runtime import fs
from mced_jax.runtime import sharding as shd
from mced_jax.train import kit
from mced_jax.train import text_setup

CLASSES = text_lib.CLASSES


def evaluate_texts(clf, texts, labels) -> tuple[dict, np.ndarray]:
  pred = clf.logits(texts)[0].argmax(-1)
  return (metrics.classification_report(labels, pred, len(CLASSES)),
          metrics.confusion_matrix(labels, pred, len(CLASSES)))


def train(config, layout) -> dict:
  c, out, model_dir = config.teacher_cls, layout.stage("teacher_cls"), layout.teacher_cls_model
  done, init_dir, tok = text_setup.start("teacher_cls", c, layout, model_dir)
  if done is not None:
    return done
  from transformers import FlaxBertForSequenceClassification as Model  # pylint: disable=import-outside-toplevel
  data_dir = c.data_dir or layout.teacher_text
  if not c.data_dir and jax.process_index() == 0:  # one writer; the others wait for it
    text_lib.ensure_teacher_text(layout.teacher_text, c.xed_dir, c.emotionlines_dir, c.seed,
                                 fs.join(layout.demo_corpus, "manifest.csv"))
  distributed.barrier("teacher_text")
  data = text_lib.read_splits(data_dir, c.max_train_examples, c.max_eval_examples, c.seed)
  model = teacher_lib.load_hf(Model, init_dir, num_labels=len(CLASSES), seed=c.seed,
                              id2label=dict(enumerate(CLASSES)),
                              label2id={n: i for i, n in enumerate(CLASSES)})
  module, bert_cfg = model.module, model.config
  train_ids, train_y = tok.encode_many(data["train"][0]), data["train"][1]
  job = text_setup.text_job(config, c, model.params, train_ids)
  mesh, policy, rows, spe, total = job.mesh, job.policy, job.rows, job.steps_per_epoch, job.total
  del model
  layout.save_config(out, config, init=init_dir, data=data_dir, precision=policy.describe())

  def loss_fn(params, batch, rng):
    logits = teacher_lib.bert_apply(module, params, batch["input_ids"], batch["attention_mask"],
                                    train=True, rng=rng).logits.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    w = batch["weight"]
    loss = (ce * w).sum() / jnp.maximum(w.sum(), 1.0)
    acc = ((logits.argmax(-1) == batch["label"]) * w).sum() / jnp.maximum(w.sum(), 1.0)
    return loss, {"loss": loss, "acc": acc}

  def batches(start):
    for step in range(start, total):
      idx, length = job.epoch_batches(step // spe + 1, c.seed, c.batch_size)[step % spe]
      b = buckets_lib.pad_token_rows(train_ids, idx, length, c.batch_size, {"label": train_y})
      yield shd.global_batch({k: v[rows] for k, v in b.items()}, rows, mesh)

  def classifier(params):
    return teacher_lib.TeacherClassifier(module, params, tok, CLASSES,
                                         batch_size=c.eval_batch_size, max_tokens=c.max_tokens,
                                         buckets=c.buckets, mesh=mesh, policy=policy)

  clock = [time.perf_counter()]

  def evaluate(state, step, meta, means):
    val, _ = evaluate_texts(classifier(state.params), *data["validation"])
    rec = {"epoch": step // spe, "train_loss": means.get("loss"), "val_WA": val["WA"],
           "val_WF1": val["WF1"], "epoch_s": time.perf_counter() - clock[0]}
    clock[0] = time.perf_counter()
    logging.info("teacher_cls: %s", rec)
    meta["history"].append(rec)
    if val["WF1"] > meta["best_wf1"]:
      meta["best_wf1"], meta["best_epoch"] = val["WF1"], rec["epoch"]
      params = export_lib.to_host(state.params)  # every process joins the gather
      if jax.process_index() == 0:
        teacher_lib.save_hf(Model, bert_cfg, params, model_dir, tok.vocab_path)
    return rec

  stop = -1 if c.stop_after_epoch < 0 else c.stop_after_epoch * spe
  loop = kit.LoopConfig.from_section(c, num_steps=total, stop_after=stop, checkpoint_every=spe,
                                     keep_checkpoints=1, eval_every=spe,
                                     examples_per_step=c.batch_size)
  with jax.set_mesh(mesh):
    res = kit.run("teacher_cls", step_fn=kit.make_train_step(
        loss_fn, job.tx, job.schedule, mesh=mesh, state_shardings=job.spec.shardings,
        policy=policy, rng_seed=c.seed), spec=job.spec, batches=batches, config=loop,
        checkpoint_dir=fs.join(out, "checkpoints"), metrics_dir=out, evaluate=evaluate,
        meta={"best_wf1": -1.0, "best_epoch": -1, "history": []})
  if res.status != "done":
    epoch = int(jax.device_get(res.state.step)) // spe
    logging.info("teacher_cls: stopped after epoch %d of %d", epoch, c.epochs)
    return {"stopped_after_epoch": epoch}
  # Test with the selected epoch's weights, read back from the saved directory.
  best = teacher_lib.load_hf(Model, model_dir)
  clf = teacher_lib.TeacherClassifier(best.module, best.params, tok, CLASSES,
                                      batch_size=c.eval_batch_size, max_tokens=c.max_tokens,
                                      buckets=c.buckets, mesh=mesh, policy=policy)
  test, cm = evaluate_texts(clf, *data["test"])
  results = {"init": init_dir, "best_epoch": res.meta["best_epoch"],
             "val_WF1": res.meta["best_wf1"], "test": test, "history": res.meta["history"],
             "classes": list(CLASSES)}
  if c.meld_test_csv and os.path.exists(c.meld_test_csv):
    meld, meld_cm = evaluate_texts(clf, *text_lib.meld_test_text(c.meld_test_csv))
    results["meld_test_5class"], results["meld_confusion"] = meld, meld_cm.tolist()
  results["test_confusion"] = cm.tolist()
  if jax.process_index() == 0:
    fs.write_text(fs.join(out, "confusion.txt"), metrics.confusion_text(cm, CLASSES) + "\n")
    metrics.plot_confusion(cm, CLASSES, fs.join(out, "confusion.png"),
                           f"teacher test: WA {test['WA']:.3f}, WF1 {test['WF1']:.3f}")
    fs.write_json(fs.join(out, "results.json"), results)
    print("teacher test confusion matrix:\n" + metrics.confusion_text(cm, CLASSES))
  logging.info("teacher_cls: test WA %.4f WF1 %.4f (best epoch %d)", test["WA"], test["WF1"],
               res.meta["best_epoch"])
  return results
