"""Graceful stop on SIGTERM/SIGINT (cluster preemption, Ctrl-C).

The handler only raises a process-wide flag. Training loops check it between
steps, save a checkpoint at the current step and return; `mced_jax.main` checks it
between stages and runs no further stage, so the same command resumes where the
job stopped. With several processes the flag is agreed on (any host signalled ->
all stop at the same step), checked every `every` steps to keep host syncs rare.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np

_FLAG = threading.Event()  # a stop signal arrived at this process
_AGREED = threading.Event()  # the job (every process) decided to stop


def _agree() -> bool:
  if jax.process_count() == 1:
    stop = _FLAG.is_set()
  else:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    flags = multihost_utils.process_allgather(np.array([_FLAG.is_set()], np.int32))
    stop = bool(np.asarray(flags).any())
  if stop:
    _AGREED.set()
  return stop


def stop_requested() -> bool:
  """True once the job agreed to stop (checked by main between stages; every
  process must call it at the same point)."""
  return _AGREED.is_set() or _agree()


class PreemptionGuard:
  """Installs the signal handlers (main thread only) for its `with` block."""

  def __init__(self, every: int = 10):
    self.every = max(1, int(every))
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

  @staticmethod
  def _handle(signum, frame):
    del frame
    if _FLAG.is_set() and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C stops at once
    _FLAG.set()

  @property
  def signalled(self) -> bool:
    return _FLAG.is_set()

  def should_stop(self, step: int) -> bool:
    """True when this (or, multi-host, any) process was signalled."""
    if _AGREED.is_set():
      return True
    if jax.process_count() > 1 and step % self.every:
      return False
    return _agree()
