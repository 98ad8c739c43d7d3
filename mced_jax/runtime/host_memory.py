"""Keeps freed host memory in the process on CPU-only installs (glibc's malloc).

XLA:CPU allocates each execution's temporary buffers as one block (~0.8 GB for
the benchmark's distillation step) from one of its worker threads and frees it
at the end. glibc serves a block that large from a worker thread's arena with a
fresh mmap every time, so every step first-touches all of it again: ~200k page
faults a step, 8-10 % of a bf16 step on a 2-core Xeon (docs/benchmark.md). With
one malloc arena, no mmap for large blocks and no trimming, the block is reused
from the heap and the faults are gone; the price is that the process keeps its
peak heap (the benchmark's resident memory: 2.6 GB -> 4.7 GB).

It must run before XLA's CPU client starts its threads (a thread keeps the
arena it first used), so `mced_jax.main` calls it first thing. It applies
only where no accelerator plugin is installed (on GPU/TPU hosts the host
heap serves input pipelines, which one arena would serialise), and
MCED_HOST_MALLOC=system / =keep forces either way.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_ACCELERATOR_PLUGINS = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu")

STATE = {"applied": False, "reason": "not yet called"}


def _accelerator_plugin() -> str | None:
  for dist in importlib.metadata.distributions():
    name = (dist.metadata["Name"] or "").lower()
    if name.startswith(_ACCELERATOR_PLUGINS):
      return name
  return None


def keep_freed_memory() -> bool:
  """Applies the malloc settings above where they fit; returns whether it did and
  records why in STATE."""
  mode = os.environ.get("MCED_HOST_MALLOC", "auto")
  if mode not in ("auto", "keep", "system"):
    raise ValueError(f"MCED_HOST_MALLOC must be auto, keep or system, got {mode!r}")
  if mode == "system":
    STATE.update(applied=False, reason="MCED_HOST_MALLOC=system")
    return False
  if mode == "auto":
    plugin = _accelerator_plugin()
    if plugin:
      STATE.update(applied=False, reason=f"accelerator plugin {plugin} installed")
      return False
  if not sys.platform.startswith("linux"):
    STATE.update(applied=False, reason=f"not glibc ({sys.platform})")
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement
  except (OSError, AttributeError):
    STATE.update(applied=False, reason="not glibc")
    return False
  ok = all(libc.mallopt(p, v) == 1 for p, v in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0),
                                                 (_M_TRIM_THRESHOLD, 2**31 - 1)))
  STATE.update(applied=ok, reason="one arena, no mmap, no trim" if ok else "mallopt refused")
  return ok
