"""Host malloc settings: XLA:CPU's per-execution temporary block is reused, not
mapped afresh (page faults per execution), and the switch is honoured."""

import json
import os
import subprocess
import sys

import pytest

from mced_jax.runtime import host_memory

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A fresh process that starts as `mced_jax.main` does, then runs a program whose
# [8192, 4096] fp32 intermediate (128 MiB) lives in XLA's temporary block.
_PROBE = """
import json, resource
from mced_jax.runtime import host_memory
host_memory.keep_freed_memory()
import jax, jax.numpy as jnp
f = jax.jit(lambda x, w: jnp.tanh(x @ w).sum(0) + jnp.exp(x @ w).max(0))
x, w = jnp.ones((8192, 64)), jnp.full((64, 4096), 1e-3)
for _ in range(3):
  f(x, w).block_until_ready()
faults = []
for _ in range(4):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x, w).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"state": host_memory.STATE, "faults": faults}))
"""


def _probe(mode):
  env = dict(os.environ, MCED_HOST_MALLOC=mode, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _PROBE], cwd=_ROOT, env=env, capture_output=True,
                       text=True, check=True, timeout=300).stdout
  return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_kept_memory_removes_the_per_execution_page_faults():
  system, kept = _probe("system"), _probe("keep")
  assert not system["state"]["applied"] and kept["state"]["applied"], (system, kept)
  # 128 MiB of fresh 4 KiB pages is ~32k faults an execution under glibc's defaults.
  assert min(system["faults"]) > 16_000, system
  assert sorted(kept["faults"])[1] < 2_000, kept


def test_switch_values(monkeypatch):
  monkeypatch.setattr(host_memory, "STATE", dict(host_memory.STATE))
  monkeypatch.delenv("MCED_HOST_MALLOC", raising=False)
  assert host_memory.keep_freed_memory() is False  # glibc's defaults unless asked
  assert host_memory.STATE["reason"] == "glibc defaults (config.host_malloc=system)"
  with pytest.raises(ValueError, match="config.host_malloc"):
    host_memory.keep_freed_memory("sometimes")
  monkeypatch.setenv("MCED_HOST_MALLOC", "system")  # the environment overrides the config
  assert host_memory.keep_freed_memory("keep") is False
  assert host_memory.STATE["reason"] == "glibc defaults (MCED_HOST_MALLOC=system)"
  monkeypatch.setenv("MCED_HOST_MALLOC", "sometimes")
  with pytest.raises(ValueError, match="MCED_HOST_MALLOC"):
    host_memory.keep_freed_memory()


def test_the_benchmark_config_keeps_the_heap_and_the_default_does_not():
  import benchmark  # configs/  pylint: disable=import-outside-toplevel
  import mced  # pylint: disable=import-outside-toplevel
  assert benchmark.get_config().host_malloc == "keep"
  assert mced.get_config().host_malloc == "system"
