"""Periodic work and timing for training loops, in one place.

`Every(n, last)` says when a periodic action is due: each n-th step (n > 0) and
at the last step. `Chrono` splits a loop's wall time into phases (compile,
evaluation, checkpoint, and everything else, which is training) and reports
training throughput over the interval since its last report, with the other
phases taken out, plus each phase's total so far -- so a slow checkpoint or a
recompilation never passes for a slow step, and the metrics say where the time went.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time


@dataclasses.dataclass(frozen=True)
class Every:
  every: int  # 0: only at `last`
  last: int | None = None

  def __call__(self, step: int) -> bool:
    return bool(self.every and step % self.every == 0) or step == self.last


class Chrono:
  """Training throughput without compile, evaluation and checkpoint time."""

  PHASES = ("compile", "eval", "checkpoint")

  def __init__(self, examples_per_step: int = 0, clock=time.perf_counter):
    self.examples_per_step, self.clock = examples_per_step, clock
    self.totals = {p: 0.0 for p in self.PHASES}
    self._since = clock()
    self._excluded = 0.0
    self._steps = 0

  @contextlib.contextmanager
  def phase(self, name: str):
    """Times a block as `name` (one of PHASES): it does not count as training."""
    if name not in self.totals:
      raise ValueError(f"unknown phase {name!r}; known: {', '.join(self.PHASES)}")
    t0 = self.clock()
    try:
      yield
    finally:
      took = self.clock() - t0
      self.totals[name] += took
      self._excluded += took

  def step(self, n: int = 1) -> None:
    """n training steps were dispatched (a compile step is timed as `compile` instead)."""
    self._steps += n

  def report(self) -> dict:
    """Throughput since the last report, and each phase's total; starts a new interval."""
    now = self.clock()
    out = {f"time/{p}_s": t for p, t in self.totals.items()}
    train = now - self._since - self._excluded
    if self._steps and train > 0:
      out["steps_per_s"] = self._steps / train
      if self.examples_per_step:
        out["examples_per_s"] = out["steps_per_s"] * self.examples_per_step
    self._since, self._excluded, self._steps = now, 0.0, 0
    return out
