"""The training kit: optimizer schedule, the NaN/Inf guard, and the loop's
TensorBoard events (read back with TensorFlow's own event reader)."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mced_jax.kernels import precision
from mced_jax.runtime import sharding as shd
from mced_jax.runtime.writers import MetricWriter, read_jsonl
from mced_jax.train import kit


def test_schedule_warmup_then_linear_decay():
  s = kit.lr_schedule(1e-3, total_steps=10, warmup_steps=2)
  np.testing.assert_allclose([float(s(i)) for i in (0, 1, 2, 6, 10)],
                             [0.0, 5e-4, 1e-3, 5e-4, 0.0], atol=1e-9)
  s = kit.lr_schedule(1e-4, total_steps=4, end_learning_rate=2e-5)
  np.testing.assert_allclose([float(s(i)) for i in (0, 2, 4)], [1e-4, 6e-5, 2e-5], atol=1e-9)


def toy(mesh):
  """Least squares on a 4-vector, a batch of x rows; NaN rows poison the loss."""
  tx, sched = kit.make_optimizer(learning_rate=0.1, total_steps=100, weight_decay=0.0)
  spec = kit.state_spec({"w": jnp.zeros((4, 1))}, tx, mesh)

  def loss_fn(p, batch, rng):
    del rng
    loss = jnp.mean((batch["x"] @ p["w"] - batch["y"]) ** 2)
    return loss, {"loss": loss}

  step = kit.make_train_step(loss_fn, tx, sched, mesh=mesh, state_shardings=spec.shardings,
                             policy=precision.Policy("float32", False), rng_seed=0)
  return spec, step


def test_nonfinite_step_is_not_applied_and_counted():
  mesh = shd.make_mesh(8, 1)
  spec, step = toy(mesh)
  rows = shd.host_rows(mesh, 8)
  x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
  good = shd.global_batch({"x": x, "y": x @ np.ones((4, 1), np.float32)}, rows, mesh)
  bad = shd.global_batch({"x": np.where(np.arange(8)[:, None] == 3, np.nan, x),
                          "y": x @ np.ones((4, 1), np.float32)}, rows, mesh)
  with jax.set_mesh(mesh):
    state, _ = step(spec.create(), good)
    before = jax.device_get(state)
    state, aux = step(state, bad)
  assert not np.isfinite(float(aux["loss"])) and int(aux["nonfinite_steps"]) == 1
  after = jax.device_get(state)
  jax.tree.map(np.testing.assert_array_equal, before.params, after.params)
  jax.tree.map(np.testing.assert_array_equal, before.opt_state, after.opt_state)
  assert int(after.step) == 2 and int(after.nonfinite_steps) == 1


def test_loop_writes_tensorboard_scalars_that_tensorflow_reads(tmp_path):
  tf = pytest.importorskip("tensorflow")
  mesh = shd.make_mesh(8, 1)
  spec, step = toy(mesh)
  rows = shd.host_rows(mesh, 8)
  rng = np.random.default_rng(1)

  def batches(start):
    for _ in range(start, 10 ** 9):
      x = rng.normal(size=(8, 4)).astype(np.float32)
      yield shd.global_batch({"x": x, "y": x @ np.ones((4, 1), np.float32)}, rows, mesh)

  evals = []

  def evaluate(state, step_, meta, means):
    evals.append((step_, means["loss"]))
    return {"train_loss_mean": means["loss"]}

  with jax.set_mesh(mesh):
    res = kit.run("toy", step_fn=step, spec=spec, batches=batches,
                  config=kit.LoopConfig(num_steps=6, log_every=2, eval_every=3,
                                        progress=False),
                  checkpoint_dir=str(tmp_path / "ckpt"), metrics_dir=str(tmp_path),
                  evaluate=evaluate)
  assert res.status == "done" and int(res.state.step) == 6 and [e[0] for e in evals] == [3, 6]
  jsonl = read_jsonl(str(tmp_path / "metrics.jsonl"))
  logged = {r["step"]: r["loss"] for r in jsonl if "loss" in r}
  assert sorted(logged) == [2, 4, 6]
  (event_file,) = glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))
  seen = {}
  for ev in tf.compat.v1.train.summary_iterator(event_file):
    for v in ev.summary.value:
      seen[(v.tag, ev.step)] = v.simple_value
  for s, loss in logged.items():
    assert seen[("loss", s)] == pytest.approx(loss, rel=1e-6)
  assert seen[("train_loss_mean", 6)] == pytest.approx(evals[1][1], rel=1e-6)
  assert ("grad_norm", 2) in seen and ("steps_per_s", 4) in seen


def test_metric_writer_only_on_process_zero_and_skips_non_numbers(tmp_path):
  w = MetricWriter(str(tmp_path))
  w.write(1, {"loss": 0.5, "note": "text", "nan": float("nan")})
  w.close()
  assert read_jsonl(str(tmp_path / "metrics.jsonl"))[0]["note"] == "text"
  assert len(os.listdir(tmp_path / "tb")) == 1


def test_evaluation_can_stop_training_early_and_a_rerun_does_nothing(tmp_path):
  """Early stopping: an evaluation returning early_stop ends the run at that step
  with status done; the same command again (resume) trains no further."""
  mesh = shd.make_mesh(8, 1)
  spec, step = toy(mesh)
  rows = shd.host_rows(mesh, 8)
  x = np.random.default_rng(2).normal(size=(8, 4)).astype(np.float32)
  batch = shd.global_batch({"x": x, "y": x @ np.ones((4, 1), np.float32)}, rows, mesh)
  calls = []

  def evaluate(state, step_, meta, means):
    calls.append(step_)
    return {"val": 1.0, "early_stop": step_ >= 4}

  def run():
    with jax.set_mesh(mesh):
      return kit.run("toy", step_fn=step, spec=spec, batches=lambda s: iter(lambda: batch, None),
                     config=kit.LoopConfig(num_steps=10, log_every=2, eval_every=2,
                                           checkpoint_every=2, progress=False),
                     checkpoint_dir=str(tmp_path / "ckpt"), metrics_dir=str(tmp_path),
                     evaluate=evaluate)

  res = run()
  assert res.status == "done" and int(res.state.step) == 4 and calls == [2, 4]
  assert res.meta["early_stopped_at"] == 4
  assert "early_stop" not in read_jsonl(str(tmp_path / "metrics.jsonl"))[-1]
  again = run()
  assert again.status == "done" and int(again.state.step) == 4 and calls == [2, 4]
