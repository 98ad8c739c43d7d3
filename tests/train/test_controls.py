"""The distillation controls change only what they name: shuffled targets move the
transcripts (and so every teacher target) between pairs and nothing else; the
supervised control trains on the pairs' own labels with no teacher."""

import numpy as np
import pytest

from data_pipelines import batch_plan, demo
from data_pipelines.dataset import PreparedDataset
from tests.data_pipelines.fixtures import demo_in_both_formats
from mced_jax.layout import Layout
from mced_jax.runtime.writers import read_jsonl
from mced_jax.train import distill, pairs


@pytest.fixture(scope="module")
def demo_pairs(tmp_path_factory):
  return demo_in_both_formats(tmp_path_factory.mktemp("controls"), num_workers=1,
                              num_shards=2)


def test_derangement_moves_every_transcript():
  for n, seed in ((2, 0), (7, 1), (30, 2)):
    p = batch_plan.derangement(n, seed)
    assert sorted(p) == list(range(n)) and not (p == np.arange(n)).any()
  assert (batch_plan.derangement(30, 2) == batch_plan.derangement(30, 2)).all()
  with pytest.raises(ValueError, match="at least 2"):
    batch_plan.derangement(1, 0)


@pytest.mark.parametrize("fmt", ["array_record", "tfrecord"])
def test_shuffled_targets_change_only_the_transcripts(demo_pairs, fmt):
  ds = PreparedDataset(demo_pairs[fmt])
  rows_of = ds.index.rows_of("train+validation+test")
  ix = ds.index
  plan = batch_plan.BatchPlan(ix.shard[rows_of], ix.bucket[rows_of], ix.buckets, ix.num_shards,
                              4, seed=0, max_frames=1000)
  rows = np.arange(4)
  text_of = batch_plan.derangement(len(rows_of), 0)
  labels = pairs.label_ids(ix, rows_of, demo.CLASSES)
  if fmt == "array_record":
    base = batch_plan.PairLoader(ds, rows_of, plan, rows, 1000, 32)
    shuf = batch_plan.PairLoader(ds, rows_of, plan, rows, 1000, 32, text_of=text_of,
                                 labels=labels)
    a_it, b_it = (base.load(s) for s in range(99)), (shuf.load(s) for s in range(99))
  else:
    from data_pipelines.tfrecord_reader import TFRecordLoader
    a_it = TFRecordLoader(ds, rows_of, plan, rows, 1000, 32).iterator(0)
    b_it = TFRecordLoader(ds, rows_of, plan, rows, 1000, 32, text_of=text_of,
                          labels=labels).iterator(0)
  for step in range(plan.steps_per_epoch):
    a, b = next(a_it), next(b_it)
    np.testing.assert_array_equal(a["features"], b["features"])  # the audio is untouched
    np.testing.assert_array_equal(a["frame_mask"], b["frame_mask"])
    for row in range(len(rows)):
      own = a["input_ids"][row][a["attention_mask"][row] > 0]
      # which examples have this transcript (the demo repeats sentences across voices);
      # the control must carry one of their planned partners' transcripts instead
      i = [k for k in range(len(rows_of)) if np.array_equal(ix.tokens(int(rows_of[k])), own)]
      moved = [ix.tokens(int(rows_of[text_of[k]])) for k in i]
      got = b["input_ids"][row][b["attention_mask"][row] > 0]
      assert any(np.array_equal(got, m) for m in moved) and not np.array_equal(got, own)
      assert b["label"][row] in [labels[k] for k in i]  # labels stay with the audio
  assert "label" not in a


def test_label_ids_map_by_name_and_refuse_foreign_labels():
  class Ix:  # the index's label columns
    labels = ("anger", "joy", "neutral")
    label = np.array([0, -1, 2, 1], np.int16)
  np.testing.assert_array_equal(pairs.label_ids(Ix, [0, 1, 2], demo.CLASSES), [4, -1, 0])
  with pytest.raises(ValueError, match="not among"):
    pairs.label_ids(Ix, [3], demo.CLASSES)
  with pytest.raises(ValueError, match="needs labelled pairs"):
    pairs.label_ids(Ix, [1], demo.CLASSES)


def _run(cfg, path, tmp_path, targets, name):
  with cfg.unlocked():
    cfg.teacher.vocab_size = 30522
    cfg.data.source, cfg.data.path, cfg.data.split = "prepared", path, "train+validation+test"
    cfg.data.max_frames, cfg.data.max_tokens = 1000, 24
    cfg.distill.batch_size, cfg.distill.num_steps, cfg.distill.log_every = 4, 3, 1
    cfg.distill.targets = targets
  res = distill.train(cfg, Layout(str(tmp_path / name)))
  logs = [r for r in read_jsonl(str(tmp_path / name / "distill" / "metrics.jsonl"))
          if "loss" in r]
  return res, logs


def test_supervised_and_shuffled_controls_distil(demo_pairs, tiny_config, tmp_path, monkeypatch):
  import copy
  # the tiny random teacher has no class names; give it the demo's (a real teacher's)
  monkeypatch.setattr(pairs, "class_names", lambda teacher: list(demo.CLASSES))
  res, logs = _run(copy.deepcopy(tiny_config), demo_pairs["array_record"], tmp_path, "labels",
                   "sup")
  assert int(res.state.step) == 3
  # cross-entropy on 5 classes, no teacher terms
  assert logs and all("ce" in r and "rl" not in r and 0 < r["ce"] < 5 for r in logs)
  res, logs = _run(copy.deepcopy(tiny_config), demo_pairs["tfrecord"], tmp_path, "shuffled",
                   "shuf")
  assert int(res.state.step) == 3 and all("rl" in r and np.isfinite(r["loss"]) for r in logs)
  cfg = copy.deepcopy(tiny_config)
  with cfg.unlocked():
    cfg.distill.targets = "labels"  # synthetic pairs have no labels
  with pytest.raises(ValueError, match="needs prepared pairs"):
    distill.train(cfg, Layout(str(tmp_path / "bad")))
