"""Resume after a planned stop (stop_after) and after preemption (SIGTERM): the
same bits as an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from mced_jax.runtime import checkpoint as ckpt_lib
from mced_jax.runtime.writers import read_jsonl
from tests.conftest import xla_flags
from tests.helpers import output, spawn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_main(workdir, *overrides):
  env = dict(os.environ, XLA_FLAGS=xla_flags(1),
             JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "mced_jax.main", "--config=configs/mced.py:tiny",
         f"--workdir={workdir}", *overrides]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def restore_params(workdir, step, sub="distill"):
  """The saved train state of `step` as numpy-backed arrays on one device."""
  mgr = ckpt_lib.Checkpointer(os.path.join(workdir, sub, "checkpoints"))
  assert mgr.latest_step() == step
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  path = os.path.join(workdir, sub, "checkpoints", str(step), "state")
  ckptr = ocp.StandardCheckpointer()
  meta = ckptr.metadata(path)
  tree = getattr(meta, "item_metadata", meta)
  # Restore onto one local device whatever topology wrote it (e.g. 2 processes).
  dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), tree)
  raw = ckptr.restore(path, target)
  mgr.close()
  return raw


def test_stop_after_then_sigterm_then_resume_equals_straight_run(tmp_path):
  """80 steps straight == 3 steps (stop_after) + a run stopped by SIGTERM + a run to
  the end, each a new process resuming from the last: the same parameters and
  optimizer state, bit for bit."""
  straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
  steps = ["--config.distill.num_steps=80", "--config.distill.log_every=2",
           "--config.distill.checkpoint_every=1000"]
  run_main(straight, *steps)
  first = run_main(split, *steps, "--config.distill.stop_after=3")
  assert "steps 0 -> 3" in first.stderr
  env = dict(os.environ, XLA_FLAGS=xla_flags(1),
             JAX_PLATFORMS="cpu")
  proc = spawn([sys.executable, "-m", "mced_jax.main", "--config=configs/mced.py:tiny",
                f"--workdir={split}", *steps], env, ROOT)
  metrics = os.path.join(split, "distill", "metrics.jsonl")
  deadline = time.time() + 300
  while time.time() < deadline:  # wait until the resumed run is training
    if os.path.exists(metrics) and any(r.get("step", 0) > 4 and "loss" in r
                                       for r in read_jsonl(metrics)):
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  err = output(proc, timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert "restored step 3" in err and "stop signal received" in err
  mgr = ckpt_lib.Checkpointer(os.path.join(split, "distill", "checkpoints"))
  stopped_at = mgr.latest_step()
  mgr.close()
  assert 4 <= stopped_at < 80, stopped_at
  last = run_main(split, *steps)
  assert f"restored step {stopped_at}" in last.stderr and f"steps {stopped_at} -> 80" in last.stderr
  a, b = restore_params(straight, 80), restore_params(split, 80)
  assert int(a["step"]) == int(b["step"]) == 80
  jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
  jax.tree.map(np.testing.assert_array_equal, a["opt_state"], b["opt_state"])
