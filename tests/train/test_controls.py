"""The distillation controls change only what they name: shuffled targets move the
transcripts (and so every teacher target) between pairs and nothing else; the
supervised control trains on the pairs' own labels with no teacher."""

import numpy as np
import pytest

from data_pipelines import batch_plan, demo
from data_pipelines.adapters import read_manifest
from data_pipelines.dataset import PreparedDataset
from data_pipelines.prepare import PrepareOptions, prepare
from mced_jax.layout import Layout
from mced_jax.runtime.writers import read_jsonl
from mced_jax.train import distill, pairs


@pytest.fixture(scope="module")
def demo_pairs(tmp_path_factory):
  root = tmp_path_factory.mktemp("controls")
  manifest = demo.generate(str(root / "demo"), per_class_per_voice=1, progress=False)
  out = str(root / "prepared")
  prepare(read_manifest(manifest), out,
          PrepareOptions(name="demo", num_workers=1, progress=False, filter_pairs=True))
  return out


def test_derangement_moves_every_transcript():
  for n, seed in ((2, 0), (7, 1), (30, 2)):
    p = batch_plan.derangement(n, seed)
    assert sorted(p) == list(range(n)) and not (p == np.arange(n)).any()
  assert (batch_plan.derangement(30, 2) == batch_plan.derangement(30, 2)).all()
  with pytest.raises(ValueError, match="at least 2"):
    batch_plan.derangement(1, 0)


def test_shuffled_targets_change_only_the_transcripts(demo_pairs):
  ds = PreparedDataset(demo_pairs)
  recs = ds.select("train+validation+test")
  plan = batch_plan.BatchPlan([r["frames"] for r in recs], (400, 1000), 6, seed=0)
  rows = np.arange(6)
  text_of = batch_plan.derangement(len(recs), 0)
  labels = pairs.label_ids(recs, demo.CLASSES)
  base = batch_plan.PairLoader(ds, recs, plan, rows, 1000, 32)
  shuf = batch_plan.PairLoader(ds, recs, plan, rows, 1000, 32, text_of=text_of, labels=labels)
  for step in range(plan.steps_per_epoch):
    a, b = base.load(step), shuf.load(step)
    _, ids = plan.at(step)
    np.testing.assert_array_equal(a["features"], b["features"])  # the audio is untouched
    np.testing.assert_array_equal(a["frame_mask"], b["frame_mask"])
    for row, i in enumerate(ids):
      own = ds.example(recs[i]).input_ids
      moved = ds.example(recs[text_of[i]]).input_ids
      np.testing.assert_array_equal(b["input_ids"][row, :len(moved)], moved)
      np.testing.assert_array_equal(a["input_ids"][row, :len(own)], own)
      assert b["label"][row] == demo.CLASSES.index(recs[i]["label"])  # labels stay
  assert "label" not in base.load(0)


def test_label_ids_map_by_name_and_refuse_foreign_labels():
  recs = [{"label": "anger"}, {"label": ""}, {"label": "neutral"}, {}]
  np.testing.assert_array_equal(pairs.label_ids(recs, demo.CLASSES), [4, -1, 0, -1])
  with pytest.raises(ValueError, match="not among"):
    pairs.label_ids([{"label": "joy"}], demo.CLASSES)
  with pytest.raises(ValueError, match="needs labelled pairs"):
    pairs.label_ids([{"label": ""}], demo.CLASSES)


def _run(cfg, path, tmp_path, targets, name):
  with cfg.unlocked():
    cfg.teacher.vocab_size = 30522
    cfg.data.source, cfg.data.path, cfg.data.split = "prepared", path, "train+validation+test"
    cfg.data.max_frames, cfg.data.max_tokens, cfg.data.frame_buckets = 400, 24, (400,)
    cfg.distill.batch_size, cfg.distill.num_steps, cfg.distill.log_every = 6, 3, 1
    cfg.distill.targets = targets
  res = distill.train(cfg, Layout(str(tmp_path / name)))
  logs = [r for r in read_jsonl(str(tmp_path / name / "distill" / "metrics.jsonl"))
          if "loss" in r]
  return res, logs


def test_supervised_and_shuffled_controls_distil(demo_pairs, tiny_config, tmp_path, monkeypatch):
  import copy
  # the tiny random teacher has no class names; give it the demo's (a real teacher's)
  monkeypatch.setattr(pairs, "class_names", lambda teacher: list(demo.CLASSES))
  res, logs = _run(copy.deepcopy(tiny_config), demo_pairs, tmp_path, "labels", "sup")
  assert int(res.state.step) == 3
  # cross-entropy on 5 classes, no teacher terms
  assert logs and all("ce" in r and "rl" not in r and 0 < r["ce"] < 5 for r in logs)
  res, logs = _run(copy.deepcopy(tiny_config), demo_pairs, tmp_path, "shuffled", "shuf")
  assert int(res.state.step) == 3 and all("rl" in r and np.isfinite(r["loss"]) for r in logs)
  cfg = copy.deepcopy(tiny_config)
  with cfg.unlocked():
    cfg.distill.targets = "labels"  # synthetic pairs have no labels
  with pytest.raises(ValueError, match="needs prepared pairs"):
    distill.train(cfg, Layout(str(tmp_path / "bad")))
