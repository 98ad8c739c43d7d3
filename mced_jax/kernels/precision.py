"""One precision policy, resolved once from the config and the hardware.

`config.dtype`:
  * "float32": fp32 everywhere.
  * "bfloat16": bf16 matmuls, fp32 master weights, optimizer state, softmaxes and
    losses; the frozen teacher is stored in bf16. On a CPU this is the
    `cpu_bf16` recipe (mced_jax/kernels): modules compute in fp32 and only
    matmul/conv operands are rounded to bf16, with fp32 accumulation.
  * "auto": bf16 on GPUs and TPUs; on a CPU bf16 only where it has bf16 units
    (avx512_bf16 or AMX), since elsewhere XLA:CPU's bf16 dots run at or below the
    fp32 rate (measured 0.9x fp32 on an AVX2 2-core machine).
`config.matmul` ("auto" | "xla" | "cpu_bf16") can force XLA's own bf16 kernels
on a CPU for comparisons. fp32 on a CPU with "auto" is `cpu_fp32`: the same maths
with the dense and convolution gradients written copy-free (mced_jax/kernels),
which spares XLA:CPU's layout copies; "xla" turns that off too.

Models take only a dtype (`policy.module_dtype`) and call the plain operations of
mced_jax/models/ops.py; the CPU kernels are bound by `policy.scope()`, entered once
around a traced step or forward pass. This module is the only door to them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp

from mced_jax.kernels import cpu_layers

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_bf16_units(cpuinfo: str = "/proc/cpuinfo") -> bool:
  try:
    with open(cpuinfo, encoding="utf-8", errors="replace") as f:
      flags = set()
      for line in f:
        if line.startswith("flags"):
          flags.update(line.split(":", 1)[1].split())
  except OSError:
    return False
  return any(f in flags for f in BF16_CPU_FLAGS)


@dataclasses.dataclass(frozen=True)
class Policy:
  dtype: str  # the resolved compute dtype: "float32" or "bfloat16"
  cpu_bf16: bool  # bf16 operands on fp32 modules (the fast CPU recipe)
  cpu_fp32: bool = False  # fp32 on a CPU: convolution gradients per kernel tap
  cpu: bool = False  # on a CPU (hash dropout masks even with matmul='xla')

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def module_dtype(self):
    """What flax modules compute in: fp32 under cpu_bf16 (only matmul operands are
    bf16), else the compute dtype."""
    return jnp.float32 if self.cpu_bf16 else self.compute_dtype

  @property
  def frozen_dtype(self):
    """Storage dtype of frozen weights (the teacher): no fp32 master copy needed."""
    return self.compute_dtype

  def scope(self):
    """The kernels of this policy, bound for a traced step (nothing off a CPU)."""
    if self.cpu_bf16:
      return cpu_layers.cpu_bf16_scope()
    if self.cpu_fp32:
      return cpu_layers.cpu_fp32_scope()
    return cpu_layers.cpu_dropout_scope() if self.cpu else contextlib.nullcontext()

  def describe(self) -> str:
    if self.cpu_bf16:
      return self.dtype + " (cpu_bf16: bf16 operands, fp32 accumulation)"
    return self.dtype + (" (cpu_fp32: copy-free dense and conv gradients)" if self.cpu_fp32 else "")


def resolve(dtype: str, matmul: str = "auto", platform: str | None = None,
            cpu_bf16_units: bool | None = None) -> Policy:
  if dtype not in ("auto",) + tuple(DTYPES):
    raise ValueError(f"dtype must be 'auto', 'float32' or 'bfloat16', got {dtype!r}")
  if matmul not in ("auto", "xla", "cpu_bf16"):
    raise ValueError(f"matmul must be one of ('auto', 'xla', 'cpu_bf16'), got {matmul!r}")
  platform = platform or jax.default_backend()
  if dtype == "auto":
    units = cpu_has_bf16_units() if cpu_bf16_units is None else cpu_bf16_units
    dtype = "bfloat16" if platform != "cpu" or units else "float32"
  if matmul == "cpu_bf16" and dtype != "bfloat16":
    raise ValueError("matmul='cpu_bf16' is a bfloat16 recipe; it needs dtype='bfloat16'")
  cpu_bf16 = dtype == "bfloat16" and (matmul == "cpu_bf16" or
                                      (matmul == "auto" and platform == "cpu"))
  cpu_fp32 = dtype == "float32" and matmul == "auto" and platform == "cpu"
  return Policy(dtype, cpu_bf16, cpu_fp32, platform == "cpu")


def from_config(config) -> Policy:
  return resolve(config.dtype, config.get("matmul", "auto"))
