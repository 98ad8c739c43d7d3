"""Test setup: 8 fake CPU devices (must be set before jax is imported)."""

import os
import sys

# LLVM at optimisation level 1: the tests' tiny steps are compile-bound, and this
# cuts XLA:CPU's compile time by about a fifth (every process in a test uses the
# same flags, so runs compared with each other compile alike).
TEST_XLA_FLAGS = os.environ.get("MCED_TEST_XLA_FLAGS", "--xla_backend_optimization_level=1")


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a test's subprocess with `devices` fake CPU devices."""
  return f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count={devices}"


os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Many tests compile the same tiny step again in fresh subprocesses (resume,
# preemption, multi-host): a persistent compilation cache shared by them saves
# minutes on 2 cores.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                   ".pytest_cache", "jax_compilation_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "configs"))

import pytest  # noqa: E402

# openSMILE's native library aborts when first loaded after TensorFlow's
# (data_pipelines/tf_compat.py); tests that read TensorBoard events with TensorFlow
# and tests that extract features may share a worker process.
from data_pipelines import tf_compat  # noqa: E402

tf_compat.opensmile_first()

SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")


@pytest.fixture
def tiny_config():
  """The tiny config on one of the 8 fake devices: most tests are about behaviour,
  not sharding, and an 8-device program compiles several times slower. The
  sharding and multi-host tests build their meshes themselves."""
  import mced  # configs/mced.py  pylint: disable=import-outside-toplevel
  c = mced.get_config("tiny")
  c.mesh.devices = 1
  return c


def require_shared_data():
  if not os.path.isdir(SHARED_DATA):
    pytest.skip(f"../shared/data not found at {os.path.abspath(SHARED_DATA)}: "
                "this test reads the shared real data")
