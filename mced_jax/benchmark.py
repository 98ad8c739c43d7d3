"""Throughput benchmark of the MCED distillation step on SYNTHETIC inputs.

For each (mesh, dtype, batch size) in `config.benchmark` it compiles the jitted,
sharded train step (timed separately: compilation never enters throughput), runs
warm-up steps, then times `timed_steps` steps one by one (block_until_ready after
each). It writes one JSON per run plus `results.md` and `throughput.png`.

Analytic FLOPs per example (a multiply-add counts 2; S tokens, T' frames after the
conv block, H/I teacher hidden/intermediate, d/m student model/MLP width, C classes):

  teacher forward   L_t (8 S H^2 + 4 S^2 H + 4 S H I) + 2 H^2 + 2 H C
  student forward   sum_l 2 T_l k_l Cin_l Cout_l          (conv block)
                    + 2 T' C_conv d                        (projection)
                    + L_s (8 T' d^2 + 4 T'^2 d + 4 T' d m) (encoder)
                    + 2 d h + 2 h C                        (classifier)
  soft-align, pair  2 S H^2 + 4 T' d H + 4 S T' H
  step              teacher_fwd + 3 (student_fwd + sum_pairs soft_align)

The factor 3 is forward + backward (backward ~ 2x forward); the teacher runs
forward only. The benchmark also reports XLA's own count (cost_analysis) beside it.
No TensorFlow is imported here.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mced_jax import sharding as shd
from mced_jax.models import teacher as teacher_lib
from mced_jax.synthetic import SyntheticPairs
from mced_jax.train import distill

# Dense bf16 peak FLOP/s per chip, from vendor data sheets.
PEAK_BF16 = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "V100": 125e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def conv_lengths(frames: int, strides) -> list[int]:
  out, t = [], frames
  for s in strides:
    t = -(-t // s)
    out.append(t)
  return out


def analytic_flops(config, frames: int, tokens: int, teacher_cfg) -> dict:
  """The formula in the module docstring; returns per-example FLOPs by part."""
  s_cfg, d_cfg = config.student, config.distill
  S, H, I = tokens, teacher_cfg.hidden_size, teacher_cfg.intermediate_size
  Lt, C = teacher_cfg.num_hidden_layers, teacher_cfg.num_labels
  teacher = Lt * (8 * S * H * H + 4 * S * S * H + 4 * S * H * I) + 2 * H * H + 2 * H * C
  lens = conv_lengths(frames, s_cfg.conv_strides)
  cin = [s_cfg.feature_dim] + list(s_cfg.conv_channels[:-1])
  conv = sum(2 * t * k * ci * co for t, k, ci, co in
             zip(lens, s_cfg.conv_kernels, cin, s_cfg.conv_channels))
  T, d, m, h = lens[-1], s_cfg.d_model, s_cfg.mlp_dim, s_cfg.classifier_hidden
  student = (conv + 2 * T * s_cfg.conv_channels[-1] * d
             + s_cfg.num_layers * (8 * T * d * d + 4 * T * T * d + 4 * T * d * m)
             + 2 * d * h + 2 * h * s_cfg.num_classes)
  align = len(d_cfg.lambdas) * (2 * S * H * H + 4 * T * d * H + 4 * S * T * H)
  return {"teacher_fwd": teacher, "student_fwd": student, "soft_align_fwd": align,
          "step": teacher + 3 * (student + align)}


def _device_peak(dtype_name: str) -> tuple[float, str]:
  dev = jax.devices()[0]
  kind = dev.device_kind
  for key, val in PEAK_BF16.items():
    if key.lower() in kind.lower():
      return val * jax.device_count(), f"{kind} bf16 dense peak x {jax.device_count()}"
  if dev.platform == "cpu":
    return measure_matmul_peak(dtype_name), f"measured {dtype_name} matmul on {kind}"
  return float("nan"), f"unknown peak for {kind}; set --config.benchmark.peak_flops"


def measure_matmul_peak(dtype_name: str, n: int = 1024, reps: int = 20) -> float:
  """Best achieved FLOP/s of an n x n matmul: the CPU's practical ceiling.

  bf16 is measured as the step computes it on CPU (bf16 operands, fp32
  accumulation: models/matmul.py), which XLA:CPU runs ~2x faster than bf16 -> bf16.
  """
  dtype = distill.compute_dtype(dtype_name)
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
  f(a).block_until_ready()
  best = math.inf
  for _ in range(reps):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best


def _mesh_from_spec(spec: str):
  try:
    data, model = (int(x) for x in spec.lower().split("x"))
  except ValueError as e:
    raise ValueError(f"benchmark mesh {spec!r} must look like DATAxMODEL, e.g. 4x2") from e
  return shd.make_mesh(data, model)


def _memory(compiled) -> dict:
  out = {}
  try:
    ma = compiled.memory_analysis()
    for k in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
              "alias_size_in_bytes", "generated_code_size_in_bytes"):
      out[k] = int(getattr(ma, k))
  except Exception:  # noqa: BLE001 - not every backend implements it
    pass
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    out["device_peak_bytes_in_use"] = int(stats["peak_bytes_in_use"])
  if "bytes_limit" in stats:
    out["device_bytes_limit"] = int(stats["bytes_limit"])
  return out


def _xla_flops(compiled) -> float | None:
  try:
    ca = compiled.cost_analysis()
  except Exception:  # noqa: BLE001
    return None
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else None
  if not ca or "flops" not in ca:
    return None
  return float(ca["flops"])


def bench_one(config, mesh_spec: str, dtype_name: str, batch: int, teacher) -> dict:
  b = config.benchmark
  cfg = copy.deepcopy(config)
  with cfg.unlocked():
    cfg.dtype = dtype_name
    cfg.distill.batch_size = batch
    cfg.mesh.fsdp = bool(b.fsdp)
  mesh = _mesh_from_spec(mesh_spec)
  shd.check_batch_divisible(batch, mesh)
  dist = distill.build(cfg, mesh=mesh, teacher=teacher)
  source = SyntheticPairs(batch, b.frames, b.tokens, teacher.config.vocab_size,
                          feature_dim=cfg.student.feature_dim, seed=cfg.seed)
  state = dist.init_state(jax.random.PRNGKey(cfg.seed))
  step = dist.make_train_step()
  with jax.set_mesh(mesh):
    batch_arrays = shd.global_batch(source.batch_at(0), mesh)
    t0 = time.perf_counter()
    compiled = step.lower(state, dist.teacher_params, batch_arrays).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(b.warmup_steps):
      state, aux = compiled(state, dist.teacher_params, batch_arrays)
    jax.block_until_ready((state, aux))
    times = []
    for _ in range(b.timed_steps):
      t0 = time.perf_counter()
      state, aux = compiled(state, dist.teacher_params, batch_arrays)
      jax.block_until_ready(aux)
      times.append(time.perf_counter() - t0)
  loss = float(aux["loss"])
  times = np.asarray(times)
  med, p90 = float(np.median(times)), float(np.percentile(times, 90))
  fl = analytic_flops(cfg, b.frames, b.tokens, teacher.config)
  step_flops = fl["step"] * batch
  xla = _xla_flops(compiled)
  peak, peak_src = (b.peak_flops, "config") if b.peak_flops > 0 else _device_peak(dtype_name)
  achieved = step_flops / med
  t_frames = conv_lengths(b.frames, cfg.student.conv_strides)[-1]
  result = {
      "mesh": dict(mesh.shape), "mesh_spec": mesh_spec, "fsdp": bool(b.fsdp),
      "dtype": dtype_name, "global_batch": batch, "frames": b.frames, "tokens": b.tokens,
      "student_frames_after_conv": t_frames,
      "teacher": {"layers": teacher.config.num_hidden_layers,
                  "hidden": teacher.config.hidden_size, "source": cfg.teacher.source},
      "student": {"d_model": cfg.student.d_model, "layers": cfg.student.num_layers},
      "devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
      "platform": jax.devices()[0].platform, "host": platform.node(),
      "jax_version": jax.__version__,
      "compile_s": compile_s, "step_time_median_s": med, "step_time_p90_s": p90,
      "examples_per_s": batch / med, "audio_frames_per_s": batch * b.frames / med,
      "text_tokens_per_s": batch * b.tokens / med,
      "analytic_flops_per_step": step_flops, "analytic_flops_by_part_per_example": fl,
      "xla_flops_per_step": xla,
      "xla_over_analytic": (xla / step_flops) if xla else None,
      "achieved_flops_per_s": achieved, "peak_flops_per_s": peak, "peak_source": peak_src,
      "mfu": achieved / peak if peak and np.isfinite(peak) else None,
      "memory": _memory(compiled), "final_loss": loss, "timed_steps": int(b.timed_steps),
  }
  if not np.isfinite(loss):
    raise FloatingPointError(f"benchmark step produced a non-finite loss: {loss}")
  return result


def _table(results: list[dict]) -> str:
  head = ("| mesh | dtype | batch | step ms (p50/p90) | examples/s | frames/s | tokens/s "
          "| compile s | TFLOP/s | MFU | XLA/analytic | temp MiB |")
  lines = [head, "|" + "---|" * 12]
  for r in results:
    mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a"
    ratio = f"{r['xla_over_analytic']:.2f}" if r["xla_over_analytic"] else "n/a"
    temp = r["memory"].get("temp_size_in_bytes", 0) / 2 ** 20
    lines.append(
        f"| {r['mesh_spec']}{' fsdp' if r['fsdp'] else ''} | {r['dtype']} | "
        f"{r['global_batch']} | {1e3 * r['step_time_median_s']:.1f} / "
        f"{1e3 * r['step_time_p90_s']:.1f} | {r['examples_per_s']:.1f} | "
        f"{r['audio_frames_per_s']:.0f} | {r['text_tokens_per_s']:.0f} | "
        f"{r['compile_s']:.1f} | {r['achieved_flops_per_s'] / 1e12:.3f} | {mfu} | "
        f"{ratio} | {temp:.0f} |")
  return "\n".join(lines)


def _plot(results: list[dict], path: str) -> None:
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    logging.info("matplotlib not installed: no plot")
    return
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  groups = {}
  for r in results:
    groups.setdefault((r["mesh_spec"], r["dtype"]), []).append(r)
  for (mesh, dt), rs in groups.items():
    rs = sorted(rs, key=lambda r: r["global_batch"])
    xs = [r["global_batch"] for r in rs]
    axes[0].plot(xs, [r["examples_per_s"] for r in rs], "o-", label=f"{mesh} {dt}")
    axes[1].plot(xs, [100 * (r["mfu"] or 0) for r in rs], "o-", label=f"{mesh} {dt}")
  axes[0].set(xlabel="global batch", ylabel="examples / s", title="Distillation throughput")
  axes[1].set(xlabel="global batch", ylabel="MFU (%)", title="Model FLOPs utilisation")
  for ax in axes:
    ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(f"MCED step on {results[0]['device_kind']} x {results[0]['devices']}")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run(config, workdir: str) -> list[dict]:
  b = config.benchmark
  os.makedirs(workdir, exist_ok=True)
  results = []
  stamp = time.strftime("%Y%m%d-%H%M%S")
  for dtype_name in b.dtypes:
    teacher = teacher_lib.load_teacher(config.teacher, dtype=distill.compute_dtype(dtype_name),
                                       seed=config.seed)
    for mesh_spec in b.meshes:
      for batch in b.batch_sizes:
        logging.info("benchmark: mesh %s dtype %s batch %d", mesh_spec, dtype_name, batch)
        r = bench_one(config, mesh_spec, dtype_name, int(batch), teacher)
        results.append(r)
        name = f"{stamp}_{mesh_spec}_{dtype_name}_b{batch}.json".replace("-1", "all")
        if jax.process_index() == 0:
          with open(os.path.join(workdir, name), "w", encoding="utf-8") as f:
            json.dump(r, f, indent=2)
        logging.info("benchmark: %.2f examples/s, step %.1f ms, compile %.1f s, MFU %s",
                     r["examples_per_s"], 1e3 * r["step_time_median_s"], r["compile_s"],
                     f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a")
  table = _table(results)
  print("\nMCED distillation step, synthetic inputs "
        f"({b.frames} frames, {b.tokens} tokens; compile excluded)\n" + table + "\n")
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.md"), "a", encoding="utf-8") as f:
      f.write(f"\n## {stamp} on {results[0]['device_kind']}\n\n{table}\n")
    _plot(results, os.path.join(workdir, "throughput.png"))
  return results
