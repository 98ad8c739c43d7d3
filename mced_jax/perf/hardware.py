"""Peak dense FLOP/s per device, by device kind and dtype, for MFU.

MFU divides by the peak of the arithmetic the step actually uses:
  * bfloat16: the chip's dense bf16 peak;
  * float32: on NVIDIA GPUs since Ampere XLA runs fp32 matmuls on TF32 tensor
    cores by default (jax_default_matmul_precision unset), so the TF32 dense peak;
    on TPUs default precision is one bf16 pass, so the bf16 peak;
  * on a CPU: a measured 1024^2 matmul in the same arithmetic as the step.
Figures are vendor data-sheet values (dense, no sparsity). Device kinds are
matched exactly (TPU) -- "TPU v5" is v5p and "TPU v5 lite" is v5e, so substring
matching would confuse them -- and by model plus form factor (GPU): an H100 PCIe
has a lower peak than an H100 SXM ("NVIDIA H100 80GB HBM3").
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp

# JAX device_kind -> (bf16, fp32-as-run) dense peak FLOP/s of one JAX device.
TPU_PEAKS = {
    "tpu v2": (22.5e12, 22.5e12),  # one device is one core (45 TFLOP/s per chip)
    "tpu v3": (61.5e12, 61.5e12),  # one core (123 per chip)
    "tpu v4": (275e12, 275e12),
    "tpu v4 lite": (137.5e12, 137.5e12),
    "tpu v5 lite": (197e12, 197e12),  # v5e
    "tpu v5e": (197e12, 197e12),
    "tpu v5": (459e12, 459e12),  # v5p
    "tpu v5p": (459e12, 459e12),
    "tpu v6 lite": (918e12, 918e12),  # v6e (Trillium)
    "tpu v6e": (918e12, 918e12),
    "tpu7x": (2307e12, 2307e12),  # Ironwood
}
# (model, form factor) -> (bf16, tf32) dense peak FLOP/s.
GPU_PEAKS = {
    ("H100", "sxm"): (989.4e12, 494.7e12),
    ("H100", "pcie"): (756.5e12, 378e12),
    ("H100", "nvl"): (835e12, 417.5e12),
    ("H200", "sxm"): (989.4e12, 494.7e12),
    ("H200", "nvl"): (835e12, 417.5e12),
    ("GH200", "sxm"): (989.4e12, 494.7e12),
    ("B200", "sxm"): (2250e12, 1100e12),
    ("A100", "sxm"): (312e12, 156e12),
    ("A100", "pcie"): (312e12, 156e12),
    ("L40S", "pcie"): (362e12, 183e12),
    ("L4", "pcie"): (121e12, 60e12),
}


def gpu_key(kind: str) -> tuple[str, str] | None:
  """('H100', 'pcie') from e.g. 'NVIDIA H100 PCIe'; SXM when no form factor is named."""
  k = kind.upper().replace("-", " ")
  form = "pcie" if "PCIE" in k else "nvl" if "NVL" in k else "sxm"
  for model in ("GH200", "H200", "H100", "B200", "A100", "L40S", "L4"):
    if model in k.split() or any(w.startswith(model) for w in k.split()):
      if (model, form) in GPU_PEAKS:
        return model, form
      return (model, "pcie") if (model, "pcie") in GPU_PEAKS else (model, "sxm")
  return None


def peak_flops(kind: str, dtype: str) -> float | None:
  """Dense peak FLOP/s of one device of this kind in this dtype; None if unknown."""
  idx = 0 if dtype == "bfloat16" else 1
  k = kind.strip().lower()
  if k in TPU_PEAKS:
    return TPU_PEAKS[k][idx]
  key = gpu_key(kind)
  return GPU_PEAKS[key][idx] if key else None


def measure_cpu_peak(dtype: str, n: int = 1024, reps: int = 20) -> float:
  """Best achieved FLOP/s of an n x n matmul: the CPU's practical ceiling, in the
  step's arithmetic (bf16: bf16 operands, fp32 accumulation, as cpu_bf16 runs)."""
  a = jnp.ones((n, n), jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
  f = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
  f(a).block_until_ready()
  best = math.inf
  for _ in range(reps):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best


def device_peak(dtype: str, devices: int) -> tuple[float, str]:
  """(peak FLOP/s over `devices` devices, where the figure comes from)."""
  dev = jax.devices()[0]
  per = peak_flops(dev.device_kind, dtype)
  if per is not None:
    what = "bf16" if dtype == "bfloat16" else ("TF32" if dev.platform == "gpu" else
                                               "fp32 (default precision: bf16 passes)")
    return per * devices, f"{dev.device_kind} {what} dense peak x {devices}"
  if dev.platform == "cpu":
    return measure_cpu_peak(dtype), f"measured {dtype} matmul on {dev.device_kind}"
  return float("nan"), f"unknown peak for {dev.device_kind}; set --config.benchmark.peak_flops"
