"""The precision policy: resolved once from config and hardware."""

import jax.numpy as jnp
import pytest

from mced_jax import precision


def test_auto_is_bf16_on_accelerators_and_only_on_cpus_with_bf16_units():
  assert precision.resolve("auto", platform="gpu") == precision.Policy("bfloat16", False)
  assert precision.resolve("auto", platform="tpu").dtype == "bfloat16"
  # an AVX2 / plain AVX-512 CPU: bf16 ran at 0.9x fp32 there, so auto stays fp32
  assert precision.resolve("auto", platform="cpu", cpu_bf16_units=False) == precision.Policy(
      "float32", False, cpu_fp32=True)
  assert not precision.resolve("float32", "xla", platform="cpu").cpu_fp32
  assert not precision.resolve("float32", platform="gpu").cpu_fp32
  # avx512_bf16 / AMX: the fast cpu_bf16 recipe
  assert precision.resolve("auto", platform="cpu", cpu_bf16_units=True) == precision.Policy(
      "bfloat16", True)


def test_explicit_dtypes_and_kernels():
  p = precision.resolve("bfloat16", platform="cpu")
  assert p.cpu_bf16 and p.module_dtype == jnp.float32 and p.frozen_dtype == jnp.bfloat16
  p = precision.resolve("bfloat16", "xla", platform="cpu")
  assert not p.cpu_bf16 and p.module_dtype == jnp.bfloat16
  assert precision.resolve("float32", platform="gpu").module_dtype == jnp.float32
  with pytest.raises(ValueError, match="needs dtype='bfloat16'"):
    precision.resolve("float32", "cpu_bf16", platform="cpu")
  with pytest.raises(ValueError, match="matmul must be one of"):
    precision.resolve("bfloat16", "fast")
  with pytest.raises(ValueError, match="dtype must be"):
    precision.resolve("float16")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
  f = tmp_path / "cpuinfo"
  f.write_text("processor: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
  assert not precision.cpu_has_bf16_units.__wrapped__(str(f))
  f.write_text("processor: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n")
  assert precision.cpu_has_bf16_units.__wrapped__(str(f))
