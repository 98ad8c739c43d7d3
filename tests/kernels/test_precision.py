"""The precision policy: resolved once from config and hardware."""

import jax.numpy as jnp
import pytest

from mced_jax.kernels import precision


def test_auto_is_bf16_on_accelerators_and_only_on_cpus_with_bf16_units():
  assert precision.resolve("auto", platform="gpu") == precision.Policy("bfloat16", False)
  assert precision.resolve("auto", platform="tpu").dtype == "bfloat16"
  # an AVX2 / plain AVX-512 CPU: bf16 ran at 0.9x fp32 there, so auto stays fp32
  assert precision.resolve("auto", platform="cpu", cpu_bf16_units=False) == precision.Policy(
      "float32", False, cpu_fp32=True, cpu=True)
  assert not precision.resolve("float32", "xla", platform="cpu").cpu_fp32
  assert not precision.resolve("float32", platform="gpu").cpu_fp32
  # avx512_bf16 / AMX: the fast cpu_bf16 recipe
  assert precision.resolve("auto", platform="cpu", cpu_bf16_units=True) == precision.Policy(
      "bfloat16", True, cpu=True)


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


@pytest.mark.parametrize("platform,dtype", [("gpu", "bfloat16"), ("tpu", "bfloat16"),
                                            ("gpu", "float32"), ("cpu", "bfloat16"),
                                            ("cpu", "float32")])
def test_only_a_cpu_policy_puts_cpu_kernels_into_the_step(platform, dtype, tiny_config,
                                                          monkeypatch):
  """The whole distillation step (teacher, student, soft-align, loss, update) traced
  under an accelerator policy calls no CPU kernel; under a CPU policy it does (so
  the count can fail)."""
  import jax
  from mced_jax import kernels
  from mced_jax.runtime import sharding as shd
  from mced_jax.train import distill
  from data_pipelines.synthetic import SyntheticPairs
  monkeypatch.setattr(precision, "from_config", lambda c: precision.resolve(
      c.dtype, c.matmul, platform=platform, cpu_bf16_units=True))
  with tiny_config.unlocked():
    tiny_config.dtype = dtype
  dist = distill.build(tiny_config)
  assert dist.policy.cpu == (platform == "cpu")
  c = tiny_config
  src = SyntheticPairs(c.distill.batch_size, c.data.max_frames, c.data.max_tokens,
                       c.teacher.vocab_size, min_frames=c.data.min_frames)
  batch = shd.global_batch(src.global_batch_at(0), shd.host_rows(dist.mesh, 8), dist.mesh)
  kernels.TRACED.clear()
  with jax.set_mesh(dist.mesh):
    jax.make_jaxpr(dist.make_step())(dist.spec.create(), batch, dist.teacher_params)
  if platform == "cpu":
    assert kernels.TRACED["keep_mask"] > 0 and (
        kernels.TRACED["matmul"] > 0 if dtype == "bfloat16" else kernels.TRACED["dense_fp32"] > 0)
  else:
    assert not kernels.TRACED, dict(kernels.TRACED)
