"""Preemption (SIGTERM mid-run, then resume) and NaN batches (skip or stop)."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mced_jax import checkpoint as ckpt_lib
from mced_jax.metrics import read_jsonl
from mced_jax.train import distill
from tests.train.test_resume import ROOT, restore_params


def test_sigterm_saves_and_resume_matches_uninterrupted(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu")
  args = ["--config=configs/mced.py:tiny", "--config.distill.num_steps=80",
          "--config.distill.log_every=2", "--config.distill.checkpoint_every=1000"]
  cmd = lambda wd: [sys.executable, "-m", "mced_jax.main", f"--workdir={wd}", *args]
  straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
  p = subprocess.run(cmd(straight), cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=400)
  assert p.returncode == 0, p.stderr[-3000:]
  proc = subprocess.Popen(cmd(split), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  metrics = os.path.join(split, "distill", "metrics.jsonl")
  deadline = time.time() + 300
  while time.time() < deadline:  # wait until training is under way
    if os.path.exists(metrics) and any("loss" in r for r in read_jsonl(metrics)):
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert "stop signal received" in err
  mgr = ckpt_lib.Checkpointer(os.path.join(split, "distill", "checkpoints"))
  stopped_at = mgr.latest_step()
  mgr.close()
  assert 2 <= stopped_at < 80, stopped_at
  p = subprocess.run(cmd(split), cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=400)
  assert p.returncode == 0, p.stderr[-3000:]
  assert f"restored step {stopped_at}" in p.stderr
  a, b = restore_params(straight, 80), restore_params(split, 80)
  jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])


class NaNAt:
  """Wraps a source so that the batch of one global step has NaN features."""

  def __init__(self, source, bad_step):
    self.source, self.bad_step, self.name = source, bad_step, source.name

  def iterator(self, start_step=0):
    for step, b in enumerate(self.source.iterator(start_step), start_step):
      if step == self.bad_step:
        b = dict(b, features=np.full_like(b["features"], np.nan))
      yield b


@pytest.fixture
def nan_config(tiny_config, monkeypatch):
  real = distill.make_source
  monkeypatch.setattr(distill, "make_source", lambda c: NaNAt(real(c), bad_step=2))
  with tiny_config.unlocked():
    tiny_config.distill.num_steps = 5
    tiny_config.distill.log_every = 1
    tiny_config.distill.checkpoint_every = 1
  return tiny_config


def test_nan_batch_is_skipped_and_counted(nan_config, tmp_path):
  state = distill.train(nan_config, str(tmp_path))
  assert int(state.step) == 5 and int(state.nonfinite_steps) == 1
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
  logs = {r["step"]: r for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if "loss" in r}
  assert not np.isfinite(logs[3]["loss"]) and logs[3]["nonfinite_steps"] == 1
  assert np.isfinite(logs[5]["loss"])


def test_nan_batch_stops_with_last_good_checkpoint_intact(nan_config, tmp_path):
  with nan_config.unlocked():
    nan_config.distill.on_nonfinite = "stop"
  with pytest.raises(FloatingPointError, match="last good checkpoint"):
    distill.train(nan_config, str(tmp_path))
  # Steps 1 and 2 were saved; the NaN step 3 was never applied nor saved.
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
  good = restore_params(str(tmp_path), 2, sub="")
  assert int(good["step"]) == 2 and int(good["nonfinite_steps"]) == 0
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(good["params"]))
