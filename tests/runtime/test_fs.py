"""The filesystem layer and URL work dirs: gs:// paths are never mangled, and an
in-memory URL work dir (fsspec memory://) round-trips a checkpoint, the metrics
(JSONL + TensorBoard), the resolved config and the export, creating no local path."""

import os

import jax
import numpy as np
import pytest

from mced_jax.layout import Layout
from mced_jax.models import export
from mced_jax.runtime import fs
from mced_jax.runtime.writers import read_jsonl
from mced_jax.train import distill


def test_urls_are_never_made_local(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert fs.abspath("gs://bucket/run/") == "gs://bucket/run"
  assert fs.join("gs://bucket/run", "distill", "checkpoints") == "gs://bucket/run/distill/checkpoints"
  assert Layout("gs://bucket/run").teacher_cls_model == "gs://bucket/run/teacher_cls/model"
  assert Layout("runs/x").root == str(tmp_path / "runs" / "x")
  assert fs.orbax_native("gs://b/x") and fs.orbax_native("/tmp/x")
  assert not fs.orbax_native("s3://b/x") and not fs.orbax_native("memory://x")
  assert fs.dirname("gs://b/run/x.json") == "gs://b/run" and fs.basename("gs://b/run/") == "run"
  assert not os.listdir(tmp_path)


def test_memory_urls_read_write_append_list():
  root = "memory://fs_unit"
  fs.write_json(fs.join(root, "a", "x.json"), {"k": 1})
  fs.append_text(fs.join(root, "log.txt"), "one\n")
  fs.append_text(fs.join(root, "log.txt"), "two\n")
  assert fs.read_json(fs.join(root, "a", "x.json")) == {"k": 1}
  assert fs.read_text(fs.join(root, "log.txt")) == "one\ntwo\n"
  assert fs.listdir(root) == ["a", "log.txt"] and fs.isdir(fs.join(root, "a"))
  fs.rmtree(fs.join(root, "a"))
  assert not fs.exists(fs.join(root, "a", "x.json"))


def test_url_workdir_round_trips_checkpoint_metrics_and_export(tiny_config, tmp_path,
                                                               monkeypatch):
  monkeypatch.chdir(tmp_path)  # any local path created would land here
  layout = Layout("memory://runs/mced")
  with tiny_config.unlocked():
    tiny_config.distill.num_steps = 4
    tiny_config.distill.stop_after = 2
    tiny_config.distill.log_every = 1
  first = distill.train(tiny_config, layout)
  assert first.status == "stopped" and int(first.state.step) == 2
  ckpts = fs.join(layout.stage("distill"), "checkpoints")
  assert fs.listdir(ckpts) == ["2"]
  with tiny_config.unlocked():
    tiny_config.distill.stop_after = -1
  second = distill.train(tiny_config, layout)  # resumes from the memory:// checkpoint
  assert second.resumed_from == 2 and int(second.state.step) == 4
  metrics = read_jsonl(fs.join(layout.stage("distill"), "metrics.jsonl"))
  assert [r["step"] for r in metrics if "loss" in r] == [1, 2, 3, 4]
  events = fs.listdir(fs.join(layout.stage("distill"), "tb"))
  assert len(events) == 2 and all(e.startswith("events.out.tfevents.") for e in events)
  assert fs.read_json(fs.join(layout.stage("distill"), "config.json"))["workdir"] == layout.root
  params, meta = export.load(layout.distilled_student)
  assert meta["kind"] == "distilled_student" and meta["step"] == 4
  # The head's classes travel with it (mced_jax.tools.probe's zero-shot scoring).
  assert len(meta["teacher_class_names"]) == meta["teacher_classes"]
  jax.tree.map(np.testing.assert_array_equal, params,
               jax.device_get(second.state.params["student"]))
  assert not os.listdir(tmp_path), f"local paths created: {os.listdir(tmp_path)}"
  with pytest.raises(FileNotFoundError, match="not an exported mced_jax model"):
    export.load("memory://runs/nothing")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
  """A tiny random BERT with the real WordPiece vocabulary, as a teacher init."""
  from tests.helpers import tiny_bert_dir
  return tiny_bert_dir(str(tmp_path_factory.mktemp("tiny_bert") / "model"))


def test_every_stage_runs_under_a_url_work_dir(tiny_bert, tmp_path, monkeypatch):
  """data (the demo corpus, prepared straight to the URL), teacher_mlm, teacher_cls
  from that stage's model (the teacher text dataset and the model), distill and
  finetune, all under memory://: every output is at the URL and no local path is
  created."""
  import mced
  from tests.conftest import SHARED_DATA, require_shared_data
  require_shared_data()
  text = os.path.abspath(os.path.join(SHARED_DATA, "text"))
  monkeypatch.chdir(tmp_path)  # any local path created would land here
  c = mced.get_config()
  c.teacher_mlm.text_files = os.path.join(text, "xed", "opensubtitles_en_lines_from_xed_pairs.txt")
  c.teacher_mlm.emotionlines_dir = c.teacher_cls.emotionlines_dir = os.path.join(
      text, "emotionlines_friends")
  c.teacher_mlm.meld_train_csv = os.path.join(text, "meld", "train_sent_emo.csv")
  c.teacher_cls.xed_dir = os.path.join(text, "xed")
  c.stages = "data,teacher_mlm,teacher_cls,distill,finetune"
  c.teacher_mlm.init, c.teacher_mlm.max_lines = tiny_bert, 64
  c.data.demo_per_class_per_voice = 1
  c.data.num_shards, c.data.frame_buckets, c.data.max_frames = 2, (400,), 400
  c.data.max_tokens = 24
  c.teacher_cls.init = "mlm"  # the URL work dir's own stage-2 model
  c.teacher_cls.max_train_examples, c.teacher_cls.max_eval_examples = 32, 16
  c.teacher_cls.meld_test_csv = ""
  c.teacher.num_layers, c.teacher.hidden_size = 2, 32
  c.distill.teacher_layers, c.distill.student_layers, c.distill.lambdas = (1, 2), (1, 2), (1, 1)
  c.student.conv_channels, c.student.d_model, c.student.num_layers = (16,) * 4, 32, 2
  c.student.mlp_dim, c.student.classifier_hidden = 64, 16
  c.distill.batch_size, c.distill.num_steps = 4, 2
  c.finetune.epochs, c.finetune.batch_size, c.finetune.eval_batch_size = 1, 4, 4
  c.finetune.crop_frames = 100
  c.mesh.devices = 1
  layout = Layout("memory://url_stages/run")
  from mced_jax import stages
  for name in stages.parse(c.stages):
    stages.run(name, c, layout)
  assert fs.exists(fs.join(layout.root, "data", "demo", "index.npz"))
  assert fs.exists(fs.join(layout.teacher_text, "train.jsonl"))
  assert fs.exists(fs.join(layout.teacher_mlm_model, "config.json"))
  assert fs.exists(fs.join(layout.teacher_cls_model, "config.json"))
  assert fs.exists(fs.join(layout.distilled_student, "model.json"))
  assert fs.exists(layout.results_md) and "Student+MCED" in fs.read_text(layout.results_md)
  assert not os.listdir(tmp_path), f"local paths created: {os.listdir(tmp_path)}"
