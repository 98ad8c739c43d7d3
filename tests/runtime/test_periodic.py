"""runtime/periodic.py: when periodic work is due, and throughput without the
time spent compiling, evaluating and checkpointing."""

import pytest

from mced_jax.runtime import periodic


def test_every_is_due_on_multiples_and_at_the_last_step():
  due = periodic.Every(3, last=10)
  assert [s for s in range(1, 11) if due(s)] == [3, 6, 9, 10]
  assert [s for s in range(1, 11) if periodic.Every(0, last=10)(s)] == [10]
  assert not any(periodic.Every(0)(s) for s in range(1, 11))


def test_chrono_takes_other_phases_out_of_the_throughput():
  now = [0.0]
  chrono = periodic.Chrono(examples_per_step=16, clock=lambda: now[0])
  for _ in range(4):  # 4 training steps of 0.5 s
    now[0] += 0.5
    chrono.step()
  with chrono.phase("eval"):
    now[0] += 3.0  # a 3-s evaluation
  with chrono.phase("checkpoint"):
    now[0] += 1.0
  r = chrono.report()
  assert r["steps_per_s"] == pytest.approx(2.0) and r["examples_per_s"] == pytest.approx(32.0)
  assert r["time/eval_s"] == 3.0 and r["time/checkpoint_s"] == 1.0 and r["time/compile_s"] == 0
  with chrono.phase("compile"):
    now[0] += 7.0
  now[0] += 1.0
  chrono.step(4)
  r = chrono.report()  # a new interval: 4 steps in 1 s of training
  assert r["steps_per_s"] == pytest.approx(4.0) and r["time/compile_s"] == 7.0
  assert "steps_per_s" not in chrono.report()  # no step since
  with pytest.raises(ValueError, match="unknown phase"):
    with chrono.phase("lunch"):
      pass
