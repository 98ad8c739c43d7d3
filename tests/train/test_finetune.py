"""The finetune stage on a tiny labelled corpus: Tables 5-7, caching, resume,
export, and errors."""

import json
import os

import numpy as np
import pytest

from data_pipelines.features import feature_path
from mced_jax import downstream, export
from mced_jax.train import distill
from mced_jax.train import finetune as ft

CLASSES = ("calm", "loud", "high")


def write_corpus(root, speakers=6, per_class=4, frames=(30, 60), seed=0):
  """A prepared-dataset layout (records.jsonl + raw feature .npy files) whose
  classes differ in their feature means: learnable in a few epochs."""
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(root, "features"), exist_ok=True)
  recs = []
  for s in range(speakers):
    for c, name in enumerate(CLASSES):
      for i in range(per_class):
        uid = f"spk{s}_{name}_{i}"
        x = rng.normal(0, 1, (int(rng.integers(*frames)), 130)).astype(np.float32)
        x[:, c * 10:(c + 1) * 10] += 2.5  # the class signal
        x = x * 50 + 100  # raw scale: standardisation must handle it
        np.save(feature_path(os.path.join(root, "features"), uid), x)
        recs.append({"utt_id": uid, "audio_path": f"/nowhere/{uid}.wav", "text": "",
                     "label": name, "speaker": f"spk{s}", "split": "train",
                     "session": f"spk{s}", "frames": len(x)})
  with open(os.path.join(root, "records.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in recs)
  with open(os.path.join(root, "report.json"), "w") as f:
    json.dump({"labels": {c: 0 for c in CLASSES}}, f)
  return root


@pytest.fixture
def ft_config(tiny_config, tmp_path):
  c = tiny_config
  with c.unlocked():
    c.finetune.data_path = write_corpus(str(tmp_path / "corpus"))
    c.finetune.protocol = "speaker_kfold"
    c.finetune.num_folds = 3
    c.finetune.max_folds = 1
    c.finetune.epochs = 3
    c.finetune.batch_size = 8
    c.finetune.eval_batch_size = 8
    c.finetune.crop_frames = 40
    c.finetune.learning_rate = 3e-3
    c.data.frame_buckets = (32, 64)
    c.distill.num_steps = 2
    c.distill.checkpoint_every = 2
  return c


def test_tables_5_6_7_end_to_end_then_resume(ft_config, tmp_path, monkeypatch):
  c = ft_config
  work = str(tmp_path / "work")
  distill.train(c, os.path.join(work, "distill"))  # the main (RL + all FL) student
  assert export.exists(os.path.join(work, "distill", "student"))
  with c.unlocked():
    c.finetune.tables = "5,6,7"
    c.finetune.fractions = (1 / 2,)
  summary = downstream.run(c, work)
  t5 = {r["variant"]: r for r in summary["table5"]}
  assert set(t5) == {downstream.SCRATCH, downstream.MCED}
  assert all(0 <= r[m] <= 1 for r in t5.values() for m in ("WA", "UAR", "F1", "WF1"))
  # the class signal is easy: both variants learn it
  assert t5[downstream.SCRATCH]["UAR"] > 0.5
  names6 = [r["variant"] for r in summary["table6"]]
  assert names6 == ["RL", "FL-2layers", "RL+FL-1layer", "RL+FL-2layers"]
  # RL+FL over all pairs *is* the main distillation: no separate ablation dir
  abl = sorted(os.listdir(os.path.join(work, "distill_ablations")))
  assert abl == ["FL-2layers", "RL", "RL_FL-1layer"]
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
  r_mced = json.load(open(ft.run_path(
      os.path.join(work, "finetune", "runs", os.listdir(os.path.join(work, "finetune", "runs"))[0]),
      ft.RunSpec(downstream.MCED, os.path.join(work, "distill", "student")),
      ft.protocols.make_folds(ft.load_corpus(c.finetune.data_path).records, "speaker_kfold", 3)[0],
      0)))
  assert r_mced["init"].endswith(os.path.join("distill", "student"))
  # A second run resumes: every run is cached, nothing trains.
  monkeypatch.setattr(ft, "train_run", lambda *a, **k: pytest.fail("retrained a cached run"))
  again = downstream.run(c, work)
  assert again["table5"] == summary["table5"]
  # A job that runs one table keeps the others in results.md.
  with c.unlocked():
    c.finetune.tables = "7"
  downstream.run(c, work)
  results = open(os.path.join(work, "results.md")).read()
  assert results.index("## Table 5") < results.index("## Table 6") < results.index("## Table 7")


def test_distilled_init_keeps_body_and_renews_head(ft_config, tmp_path):
  c = ft_config
  distill.train(c, str(tmp_path / "d"))
  pre, _ = export.load(str(tmp_path / "d" / "student"))
  student = ft.student_lib.student_from_config(c.student).clone(num_classes=3)
  p = ft.init_params(student, 130, seed=1, init_dir=str(tmp_path / "d" / "student"))
  np.testing.assert_array_equal(p["layer_1"]["qkv"]["kernel"], pre["layer_1"]["qkv"]["kernel"])
  assert p["fc_2"]["kernel"].shape[-1] == 3  # new head for the new classes
  with c.unlocked():
    c.student.d_model = 48
  other = ft.student_lib.student_from_config(c.student)
  with pytest.raises(ValueError, match="distilled architecture"):
    ft.init_params(other, 130, seed=1, init_dir=str(tmp_path / "d" / "student"))


def test_missing_corpus_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="records.jsonl"):
    ft.load_corpus(str(tmp_path))
