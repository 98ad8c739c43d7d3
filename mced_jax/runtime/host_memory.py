"""Keeps freed host memory in the process (glibc's malloc), for step-bound CPU runs.

XLA:CPU allocates each execution's temporary buffers as one block (~0.8 GB for
the benchmark's distillation step) from one of its worker threads and frees it
at the end. glibc serves a block that large from a worker thread's arena with a
fresh mmap every time, so every step first-touches all of it again: ~200k page
faults a step, 5-9 % of the step on a 2-core Xeon (docs/benchmark.md). With one
malloc arena, no mmap for large blocks and no trimming, the block is reused from
the heap and the faults are gone.

The price: every thread then shares one arena, so malloc-heavy multi-threaded
work (XLA's compilation above all) is slower, and the process keeps its peak
heap. So it is a choice (`config.host_malloc`): "keep" for step-bound runs (the
benchmark config), "system" (glibc's defaults) otherwise; MCED_HOST_MALLOC
overrides the config. "keep" is left off where an accelerator plugin is
installed: there the host heap serves the input pipeline's threads.

It must run before XLA's CPU client starts its threads (a thread keeps the arena
it first used), so `mced_jax.main` calls it first thing.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_ACCELERATOR_PLUGINS = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu")
MODES = ("keep", "system")

STATE = {"applied": False, "reason": "not yet called"}


def _accelerator_plugin() -> str | None:
  for dist in importlib.metadata.distributions():
    name = (dist.metadata["Name"] or "").lower()
    if name.startswith(_ACCELERATOR_PLUGINS):
      return name
  return None


def _skip(reason: str) -> bool:
  STATE.update(applied=False, reason=reason)
  return False


def keep_freed_memory(mode: str = "system") -> bool:
  """Applies the malloc settings above if `mode` (or MCED_HOST_MALLOC) is "keep"
  and they fit; returns whether it did and records why in STATE."""
  override = os.environ.get("MCED_HOST_MALLOC")
  source = "MCED_HOST_MALLOC" if override else "config.host_malloc"
  mode = override or mode
  if mode not in MODES:
    raise ValueError(f"{source} must be one of {MODES}, got {mode!r}")
  if mode == "system":
    return _skip(f"glibc defaults ({source}=system)")
  plugin = _accelerator_plugin()
  if plugin:
    return _skip(f"glibc defaults: accelerator plugin {plugin} installed")
  if not sys.platform.startswith("linux"):
    return _skip(f"system allocator (not glibc: {sys.platform})")
  try:
    libc = ctypes.CDLL("libc.so.6")
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement
  except (OSError, AttributeError):
    return _skip("system allocator (not glibc)")
  ok = all(libc.mallopt(p, v) == 1 for p, v in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0),
                                                 (_M_TRIM_THRESHOLD, 2**31 - 1)))
  if not ok:
    return _skip("glibc defaults (mallopt refused)")
  STATE.update(applied=True, reason="kept: one arena, no mmap, no trim")
  return True
