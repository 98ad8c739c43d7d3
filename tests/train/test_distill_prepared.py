"""Distillation fed by the global batch plan over a prepared (demo) corpus."""

import jax
import numpy as np

from data_pipelines import demo
from data_pipelines.adapters import read_manifest
from data_pipelines.prepare import PrepareOptions, prepare
from mced_jax.layout import Layout
from mced_jax.runtime.writers import read_jsonl
from mced_jax.train import distill


def test_distill_reads_prepared_pairs_and_resumes(tmp_path, tiny_config):
  manifest = demo.generate(str(tmp_path / "demo"), per_class_per_voice=1, progress=False)
  out = str(tmp_path / "prepared")
  prepare(read_manifest(manifest), out,
          PrepareOptions(name="demo", num_workers=1, progress=False, filter_pairs=True))
  cfg = tiny_config
  with cfg.unlocked():
    cfg.teacher.vocab_size = 30522  # the real WordPiece vocabulary of the corpus
    cfg.data.source = "prepared"
    cfg.data.path = out
    cfg.data.max_frames = 400
    cfg.data.max_tokens = 24
    cfg.data.frame_buckets = (400,)  # one static shape: one compilation per run
    cfg.distill.batch_size = 8  # one example per fake device
    cfg.distill.num_steps = 4
    cfg.distill.stop_after = 2
  layout = Layout(str(tmp_path / "run"))
  res = distill.train(cfg, layout)
  assert int(res.state.step) == 2 and res.status == "stopped"
  with cfg.unlocked():
    cfg.distill.stop_after = -1
  res = distill.train(cfg, layout)
  assert int(res.state.step) == 4 and res.resumed_from == 2
  state = res.state
  metrics = str(tmp_path / "run" / "distill" / "metrics.jsonl")
  # A third run finds the work done and does no step.
  n_logs = len(read_jsonl(metrics))
  assert int(distill.train(cfg, layout).state.step) == 4
  assert len(read_jsonl(metrics)) == n_logs
  logs = [r for r in read_jsonl(metrics) if "loss" in r]
  assert logs and all(np.isfinite(r["loss"]) and r["rl"] >= 0 for r in logs)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
