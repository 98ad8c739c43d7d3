"""Resume: 6 steps straight == 3 steps, then a new process running 3 more."""

import os
import subprocess
import sys

import jax
import numpy as np

from mced_jax import checkpoint as ckpt_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_main(workdir, *overrides):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
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


def test_split_run_equals_straight_run(tmp_path):
  straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
  run_main(straight, "--config.distill.num_steps=6")
  first = run_main(split, "--config.distill.num_steps=6", "--config.distill.stop_after=3")
  assert "steps 0 -> 3" in first.stderr
  second = run_main(split, "--config.distill.num_steps=6")
  assert "restored step 3" in second.stderr and "steps 3 -> 6" in second.stderr
  a, b = restore_params(straight, 6), restore_params(split, 6)
  assert int(a["step"]) == int(b["step"]) == 6
  jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
  jax.tree.map(np.testing.assert_array_equal, a["opt_state"], b["opt_state"])
