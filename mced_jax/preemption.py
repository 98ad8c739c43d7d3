"""Graceful stop on SIGTERM/SIGINT (cluster preemption, Ctrl-C).

The handler only raises a flag; the training loop checks it between steps, saves a
checkpoint at the current step and exits cleanly, so the same command resumes.
With several processes the flag is agreed on (any host signalled -> all stop at
the same step), checked every `every` steps to keep host syncs rare.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np


class PreemptionGuard:

  def __init__(self, every: int = 10):
    self.every = max(1, int(every))
    self._flag = threading.Event()
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)
    return False

  def _handle(self, signum, frame):
    del frame
    if self._flag.is_set() and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C stops at once
    self._flag.set()

  @property
  def signalled(self) -> bool:
    return self._flag.is_set()

  def should_stop(self, step: int) -> bool:
    """True when this (or, multi-host, any) process was signalled."""
    if jax.process_count() == 1:
      return self._flag.is_set()
    if step % self.every:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    flags = multihost_utils.process_allgather(np.array([self._flag.is_set()], np.int32))
    return bool(np.asarray(flags).any())
