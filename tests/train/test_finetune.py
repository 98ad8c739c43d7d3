"""The finetune stage on a tiny labelled corpus: Tables 5-7, caching, resume,
export, preemption (SIGTERM) and NaN batches, and errors."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mced_jax.evaluation import labelled
from mced_jax.layout import Layout
from mced_jax.models import export
from mced_jax.train import distill
from mced_jax.train import downstream
from mced_jax.train import finetune as ft
from tests.helpers import output, spawn, write_prepared
from tests.train.test_resume import ROOT
from tests.conftest import xla_flags

CLASSES = ("calm", "loud", "high")


def write_corpus(root, speakers=6, per_class=4, frames=(30, 60), seed=0):
  """A prepared labelled corpus whose classes differ in their feature means:
  learnable in a few epochs."""
  rng = np.random.default_rng(seed)
  examples = []
  for s in range(speakers):
    for c, name in enumerate(CLASSES):
      for i in range(per_class):
        x = rng.normal(0, 1, (int(rng.integers(*frames)), 130)).astype(np.float32)
        x[:, c * 10:(c + 1) * 10] += 2.5  # the class signal
        x = x * 50 + 100  # raw scale: standardisation must handle it
        examples.append({"utt_id": f"spk{s}_{name}_{i}", "features": x, "label": name,
                         "speaker": f"spk{s}"})
  return write_prepared(root, examples, CLASSES)


@pytest.fixture
def ft_config(tiny_config, tmp_path):
  c = tiny_config
  with c.unlocked():
    c.finetune.data_path = write_corpus(str(tmp_path / "corpus"))
    c.finetune.protocol = "speaker_kfold"
    c.finetune.num_folds = 3
    c.finetune.max_folds = 1
    c.finetune.epochs = 2
    c.finetune.batch_size = 8
    c.finetune.eval_batch_size = 8
    c.finetune.crop_frames = 40
    c.finetune.learning_rate = 3e-3
    c.data.frame_buckets = (32, 64)
    c.distill.num_steps = 2
    c.distill.checkpoint_every = 2
    # one layer pair: Table 6 is then RL, FL-1layers and RL+FL-1layer (= the main run)
    c.distill.teacher_layers, c.distill.student_layers, c.distill.lambdas = (4,), (4,), (1.0,)
  return c


def test_tables_5_6_7_end_to_end_then_resume(ft_config, tmp_path, monkeypatch):
  c = ft_config
  work = str(tmp_path / "work")
  layout = Layout(work)
  distill.train(c, layout)  # the main (RL + all FL) student
  assert export.exists(os.path.join(work, "distill", "student"))
  with c.unlocked():
    c.finetune.tables = "5,6,7"
    c.finetune.fractions = (1 / 2,)
  summary = downstream.run(c, layout)
  t5 = {r["variant"]: r for r in summary["table5"]}
  assert set(t5) == {downstream.SCRATCH, downstream.MCED}
  assert all(0 <= r[m] <= 1 for r in t5.values() for m in ("WA", "UAR", "F1", "WF1"))
  # the class signal is easy: both variants learn it
  assert t5[downstream.SCRATCH]["UAR"] > 0.5
  names6 = [r["variant"] for r in summary["table6"]]
  assert names6 == ["RL", "FL-1layers", "RL+FL-1layer"]
  # RL+FL over all pairs *is* the main distillation: no separate ablation dir
  abl = sorted(os.listdir(os.path.join(work, "distill_ablations")))
  assert abl == ["FL-1layers", "RL"]
  assert [r["variant"] for r in summary["table7"]] == [
      f"{downstream.MCED} 1/2", f"{downstream.SCRATCH} full"]
  results = open(os.path.join(work, "results.md")).read()
  for t in ("Table 5", "Table 6", "Table 7"):
    assert t in results
  assert os.path.exists(os.path.join(work, "finetune", "table5_confusion_Student_plus_MCED.png"))
  for t in (5, 6, 7):
    assert os.path.getsize(os.path.join(work, "finetune", f"table{t}.png")) > 1000
  rows = open(os.path.join(work, "finetune", "table5_runs.csv")).read().splitlines()
  assert len(rows) == 1 + 2  # header + 2 variants x 1 fold x 1 seed
  # exported classifiers for prediction
  params, meta = export.load(os.path.join(work, "finetune", "model_mced"))
  assert meta["classes"] == list(CLASSES) and meta["kind"] == "emotion_classifier"
  # The Student+MCED run started from the distilled weights, not from scratch.
  cache = os.path.join(work, "finetune", "runs", os.listdir(os.path.join(work, "finetune",
                                                                           "runs"))[0])
  spec = downstream.RunSpec(downstream.MCED, os.path.join(work, "distill", "student"))
  fold = ft.protocols.make_folds(labelled.load_corpus(c.finetune.data_path).records,
                                 "speaker_kfold", 3)[0]
  r_mced = json.load(open(os.path.join(cache, spec.key, fold.name, "seed0.json")))
  assert r_mced["init"].endswith(os.path.join("distill", "student"))
  assert not os.path.exists(os.path.join(cache, spec.key, fold.name, "seed0", "checkpoints"))
  # A second run resumes: every run is cached, nothing trains.
  monkeypatch.setattr(ft, "train_run", lambda *a, **k: pytest.fail("retrained a cached run"))
  again = downstream.run(c, layout)
  assert again["table5"] == summary["table5"]
  # Another work dir sharing the run cache (and this student) gets its exported
  # classifiers from the cache, still without training.
  other = Layout(str(tmp_path / "other"))
  with c.unlocked():
    c.finetune.cache_dir = os.path.join(work, "finetune", "runs")
    c.finetune.init_dir = os.path.join(work, "distill", "student")
    c.finetune.tables = "5"
  assert downstream.run(c, other)["table5"] == summary["table5"]
  got, meta2 = export.load(os.path.join(other.root, "finetune", "model_mced"))
  assert meta2 == meta and all(np.array_equal(a, b) for a, b in zip(
      jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(params)))
  with c.unlocked():
    c.finetune.cache_dir, c.finetune.init_dir = "", ""
  # A job that runs one table keeps the others in results.md.
  with c.unlocked():
    c.finetune.tables = "7"
  downstream.run(c, layout)
  results = open(os.path.join(work, "results.md")).read()
  assert results.index("## Table 5") < results.index("## Table 6") < results.index("## Table 7")


def test_distilled_init_keeps_body_and_renews_head(ft_config, tmp_path):
  c = ft_config
  distill.train(c, Layout(str(tmp_path)))
  student_dir = str(tmp_path / "distill" / "student")
  pre, _ = export.load(student_dir)
  student = ft.student_lib.student_from_config(c.student).clone(num_classes=3)
  p = ft.init_params(student, 130, seed=1, init_dir=student_dir)
  np.testing.assert_array_equal(p["layer_1"]["qkv"]["kernel"], pre["layer_1"]["qkv"]["kernel"])
  assert p["fc_2"]["kernel"].shape[-1] == 3  # new head for the new classes
  with c.unlocked():
    c.student.d_model = 48
  other = ft.student_lib.student_from_config(c.student)
  with pytest.raises(ValueError, match="distilled architecture"):
    ft.init_params(other, 130, seed=1, init_dir=student_dir)


def test_missing_corpus_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="records.jsonl"):
    labelled.load_corpus(str(tmp_path))


def test_nan_batch_is_skipped_and_the_run_completes(ft_config, monkeypatch, tmp_path):
  """A training utterance with NaN features makes its batches non-finite: the kit
  skips those updates (counted), the run finishes with finite weights."""
  c = ft_config
  real = labelled.standardized

  def poisoned(corpus, fold, train_ids, mode):
    out = real(corpus, fold, train_ids, mode)
    out[train_ids[0]] = np.full_like(out[train_ids[0]], np.nan)
    return out

  monkeypatch.setattr(labelled, "standardized", poisoned)
  corpus = labelled.load_corpus(c.finetune.data_path)
  fold = ft.protocols.make_folds(corpus.records, "speaker_kfold", 3)[0]
  from mced_jax.runtime import sharding as shd
  r = ft.train_run(c, corpus, fold, 0, None, 1.0, shd.from_config(c.mesh),
                   str(tmp_path / "run"), export_dir=str(tmp_path / "model"))
  assert r["nonfinite_steps"] == c.finetune.epochs  # that utterance's batch, every epoch
  assert all(np.isfinite(h["train_loss"]) for h in r["history"])
  params, _ = export.load(str(tmp_path / "model"))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  assert r["test"]["UAR"] > 0.5  # still learned the class signal


def test_sigterm_mid_finetune_then_resume_equals_straight_run(tmp_path):
  corpus = write_corpus(str(tmp_path / "corpus"))
  env = dict(os.environ, XLA_FLAGS=xla_flags(1),
             JAX_PLATFORMS="cpu")
  args = ["--config=configs/mced.py:tiny", "--config.stages=finetune",
          f"--config.finetune.data_path={corpus}", "--config.finetune.protocol=speaker_kfold",
          "--config.finetune.num_folds=3", "--config.finetune.max_folds=1",
          "--config.finetune.epochs=10", "--config.finetune.batch_size=8",
          "--config.finetune.eval_batch_size=8", "--config.finetune.crop_frames=40",
          "--config.finetune.learning_rate=3e-3", "--config.data.frame_buckets=(32,64)",
          f"--config.finetune.init_dir={tmp_path / 'none'}"]
  cmd = lambda wd, *extra: [sys.executable, "-m", "mced_jax.main", f"--workdir={wd}", *args,
                            *extra]
  scratch_only = ["--config.finetune.tables=7", "--config.finetune.fractions=()"]
  straight, split = tmp_path / "straight", tmp_path / "split"
  p = subprocess.run(cmd(straight, *scratch_only), cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  proc = spawn(cmd(split, *scratch_only), env, ROOT)
  deadline = time.time() + 300
  metrics = None
  while time.time() < deadline and proc.poll() is None:  # wait for epoch 3 of the run
    found = [os.path.join(d, f) for d, _, fs in os.walk(split) for f in fs
             if f == "metrics.jsonl"]
    if found and sum('"epoch"' in l for l in open(found[0])) >= 3:
      metrics = found[0]
      break
    time.sleep(0.05)
  assert metrics, "the fine-tuning run never got going"
  proc.send_signal(signal.SIGTERM)
  err = output(proc, timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert "stop signal received" in err and "re-run to resume" in err
  p = subprocess.run(cmd(split, *scratch_only), cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "restored step" in p.stderr
  run = lambda wd: json.load(open([os.path.join(d, f) for d, _, fs in os.walk(wd / "finetune")
                                   for f in fs if f == "seed0.json"][0]))
  a, b = run(straight), run(split)
  assert a["best_epoch"] == b["best_epoch"] and a["test"] == b["test"]
  assert [h["val_UAR"] for h in a["history"]] == [h["val_UAR"] for h in b["history"]]
  np.testing.assert_allclose(a["test_probs"], b["test_probs"], atol=1e-5)


def test_mask_augment_masks_valid_frames_only_and_is_seeded():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 50, 130)).astype(np.float32) + 5.0  # no natural zeros
  m = np.zeros((4, 50), bool)
  for b, n in enumerate((50, 30, 10, 0)):
    m[b, :n] = True
  x[~m] = 0.0
  out = labelled.mask_augment(x, m, np.random.default_rng(1), 2, 8, 2, 13)
  again = labelled.mask_augment(x, m, np.random.default_rng(1), 2, 8, 2, 13)
  np.testing.assert_array_equal(out, again)  # a pure function of the seed
  assert not np.shares_memory(out, x) and (x[m] != 0).all()  # input untouched
  zeroed = (out == 0) & m[..., None]
  assert zeroed.any()
  np.testing.assert_array_equal(out[~m], 0.0)  # padding stays padding
  # Time masks zero whole frames (all 130 dims) of at most 2 x 8 frames per example.
  full = zeroed.all(-1)
  assert all(full[b].sum() <= 16 for b in range(4))
  # Feature masks zero at most 2 x 13 dimensions of every valid frame.
  bands = zeroed[0].all(0)
  assert 0 < bands.sum() <= 26 or full[0].sum() > 0


def test_speaker_norm_augment_and_early_stopping_run(ft_config, tmp_path, monkeypatch):
  """The improved-recipe options together: per-speaker standardisation, masking
  augmentation and early stopping (patience 1 over 6 epochs, validation forced
  flat so the run must stop after the second epoch), with a per-speaker export."""
  c = ft_config
  with c.unlocked():
    c.finetune.normalize = "speaker"
    c.finetune.epochs, c.finetune.patience = 6, 1
    c.finetune.augment.time_masks = c.finetune.augment.feature_masks = 2
  real = ft.metrics_lib.classification_report
  monkeypatch.setattr(ft.metrics_lib, "classification_report",
                      lambda y, p, nc: {**real(y, p, nc), "UAR": 0.5})  # never improves
  corpus = labelled.load_corpus(c.finetune.data_path)
  fold = ft.protocols.make_folds(corpus.records, "speaker_kfold", 3)[0]
  mesh = ft.shd.make_mesh(1, 1, devices=jax.devices()[:1])
  r = ft.train_run(c, corpus, fold, 0, None, 1.0, mesh, str(tmp_path / "run"),
                   export_dir=str(tmp_path / "exp"), export_meta={})
  assert [h["epoch"] for h in r["history"]] == [1, 2] and r["best_epoch"] == 1
  _, meta = export.load(str(tmp_path / "exp"))
  assert meta["normalize"] == "speaker" and meta["feature_mean"] is None


def test_grouped_train_plan_keeps_one_speaker_per_group():
  ids = [f"s{s}_u{i}" for s in range(4) for i in range(9)]
  speakers = {u: u.split("_")[0] for u in ids}
  plan = labelled.train_plan({u: 50 for u in ids}, ids, 8, 40, 2, 0, speakers, 4)
  assert len(plan) == 2 * 4  # per epoch 4 speakers x 2 groups of 4 = 4 batches of 2 groups
  for idx, offs in plan:
    assert len(set(idx.tolist())) == 8 and all(0 <= o <= 10 for o in offs)
    for g in (idx[:4], idx[4:]):
      assert len({speakers[ids[i]] for i in g}) == 1
  with pytest.raises(ValueError, match="multiple"):
    labelled.train_plan({u: 50 for u in ids}, ids, 6, 40, 1, 0, speakers, 4)
  # Without groups: every batch distinct utterances, an epoch never repeats one.
  flat = labelled.train_plan({u: 50 for u in ids}, ids, 8, 40, 1, 0)
  seen = np.concatenate([idx for idx, _ in flat])
  assert len(flat) == 4 and len(set(seen.tolist())) == 32


def test_speaker_norm_run_learns_and_exports_the_option(ft_config, tmp_path):
  """Fine-tuning a speaker_norm student: training batches are one-speaker groups,
  evaluation standardises every pooled vector with its speaker's statistics, and
  the export says so (predict needs it)."""
  c = ft_config
  with c.unlocked():
    c.student.pooling, c.student.speaker_norm = "stats", True
    # 12 utterances per speaker: one group of 8 each, 4 wait (fewer batches per epoch)
    c.finetune.speaker_group, c.finetune.epochs = 8, 6
  corpus = labelled.load_corpus(c.finetune.data_path)
  fold = ft.protocols.make_folds(corpus.records, "speaker_kfold", 3)[0]
  mesh = ft.shd.make_mesh(1, 1, devices=jax.devices()[:1])
  r = ft.train_run(c, corpus, fold, 0, None, 1.0, mesh, str(tmp_path / "run"),
                   export_dir=str(tmp_path / "exp"),
                   export_meta={"student": export.student_dict(c.student)})
  probs = np.array(r["test_probs"])
  assert np.allclose(probs.sum(1), 1, atol=1e-3) and r["test"]["UAR"] > 0.5  # chance 1/3
  _, meta = export.load(str(tmp_path / "exp"))
  assert meta["student"]["speaker_norm"] is True
