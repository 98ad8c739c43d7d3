"""NaN/Inf batches in distillation: skipped and counted, or a stop with the last
good checkpoint intact. (Preemption: test_resume.py.)"""

import os

import jax
import numpy as np
import pytest

from mced_jax.layout import Layout
from mced_jax.runtime.writers import read_jsonl
from mced_jax.train import distill
from tests.train.test_resume import restore_params


def nan_at(feed, bad_step):
  """Wraps a batch stream so that the batch of one global step has NaN features."""

  def wrapped(start):
    for step, b in enumerate(feed(start), start):
      yield dict(b, features=b["features"] * np.nan) if step == bad_step else b

  return wrapped


@pytest.fixture
def nan_config(tiny_config, monkeypatch):
  real = distill.batches
  monkeypatch.setattr(distill, "batches",
                      lambda *a, **k: (lambda n, f, s: (n, nan_at(f, 2), s))(*real(*a, **k)))
  with tiny_config.unlocked():
    tiny_config.distill.num_steps = 5
    tiny_config.distill.log_every = 1
    tiny_config.distill.checkpoint_every = 1
  return tiny_config


def test_nan_batch_is_skipped_and_counted(nan_config, tmp_path):
  state = distill.train(nan_config, Layout(str(tmp_path))).state
  assert int(state.step) == 5 and int(state.nonfinite_steps) == 1
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
  logs = {r["step"]: r for r in read_jsonl(str(tmp_path / "distill" / "metrics.jsonl"))
          if "loss" in r}
  assert not np.isfinite(logs[3]["loss"]) and logs[3]["nonfinite_steps"] == 1
  assert np.isfinite(logs[5]["loss"])


def test_nan_batch_stops_with_last_good_checkpoint_intact(nan_config, tmp_path):
  with nan_config.unlocked():
    nan_config.distill.on_nonfinite = "stop"
  with pytest.raises(FloatingPointError, match="last good checkpoint"):
    distill.train(nan_config, Layout(str(tmp_path)))
  # Steps 1 and 2 were saved; the NaN step 3 was never applied nor saved.
  assert sorted(os.listdir(tmp_path / "distill" / "checkpoints")) == ["1", "2"]
  good = restore_params(str(tmp_path), 2)
  assert int(good["step"]) == 2 and int(good["nonfinite_steps"]) == 0
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(good["params"]))
