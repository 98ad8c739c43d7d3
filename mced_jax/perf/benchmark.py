"""Throughput benchmark of the MCED distillation step.

For each (mesh, dtype, batch size) in `config.benchmark` it compiles the jitted,
sharded train step (timed separately: compilation never enters throughput), runs
warm-up steps, then times `timed_steps` steps one by one (block_until_ready after
each), on one SYNTHETIC batch. With `benchmark.input=prepared` it also measures
the input pipeline on a prepared dataset (`benchmark.data_path`): the loader alone
(examples/s, MB/s) and the step fed by it against the same step on a fixed batch
(the two feeds alternate in blocks of 5 steps, so host drift hits both alike).
It writes one JSON per run plus `results.md` and `throughput.png`. Memory is the
compiled step's own (XLA memory analysis, per device), so every run reports its
own figure, not the process's running peak. MFU uses mced_jax/perf/hardware.py.

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
import platform
import time

import jax
import numpy as np
from absl import logging

from data_pipelines.synthetic import SyntheticPairs
from mced_jax import kernels
from mced_jax.models import teacher as teacher_lib
from mced_jax.perf import hardware
from mced_jax.runtime import fs
from mced_jax.runtime import sharding as shd
from mced_jax.train import distill


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


def parse_mesh(spec: str) -> tuple[int, int]:
  try:
    data, fsdp = (int(x) for x in spec.lower().split("x"))
  except ValueError as e:
    raise ValueError(f"benchmark mesh {spec!r} must look like DATAxFSDP, e.g. 4x2") from e
  return data, fsdp


def memory(compiled) -> dict:
  """Per-device bytes of this compiled step (XLA's memory analysis)."""
  out = {}
  try:
    ma = compiled.memory_analysis()
    for k in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
              "alias_size_in_bytes", "generated_code_size_in_bytes"):
      out[k] = int(getattr(ma, k))
    out["total_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"] +
                          out["temp_size_in_bytes"] - out["alias_size_in_bytes"])
  except Exception:  # noqa: BLE001 - not every backend implements it
    pass
  return out


def state_bytes_per_device(tree) -> int:
  """Bytes of a sharded pytree held by one device (its shards)."""
  return int(sum(np.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                 for x in jax.tree.leaves(tree)))


def allreduce_seconds(mesh, elems: int, reps: int = 5) -> float:
  """Best time of one all-reduce (sum) of `elems` fp32 values per device over the
  mesh's batch axes: the data-parallel gradient all-reduce of a step."""
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=import-outside-toplevel
  n = shd.batch_parallelism(mesh)
  sharding = NamedSharding(mesh, P(shd.BATCH_AXES))
  x = jax.make_array_from_callback((n, elems), sharding,
                                   lambda idx: np.ones((1, elems), np.float32))
  f = jax.jit(lambda x: x.sum(0), out_shardings=shd.replicated(mesh))
  jax.block_until_ready(f(x))
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(f(x))
    best = min(best, time.perf_counter() - t0)
  return best


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


def build_run(config, mesh_spec: str, dtype_name: str, batch: int, teacher):
  """(distillation, state, step, mesh, rows, config) at one benchmark setting."""
  cfg = copy.deepcopy(config)
  with cfg.unlocked():
    cfg.dtype = dtype_name
    cfg.distill.batch_size = batch
  data, fsdp = parse_mesh(mesh_spec)
  mesh = shd.make_mesh(data, fsdp)
  shd.check_batch(batch, mesh)
  dist = distill.build(cfg, mesh=mesh, teacher=teacher)
  return dist, dist.spec.create(), dist.make_step(), mesh, shd.host_rows(mesh, batch), cfg


def bench_one(config, mesh_spec: str, dtype_name: str, batch: int, teacher) -> dict:
  b = config.benchmark
  dist, state, step, mesh, rows, cfg = build_run(config, mesh_spec, dtype_name, batch, teacher)
  source = SyntheticPairs(batch, b.frames, b.tokens, teacher.config.vocab_size,
                          feature_dim=cfg.student.feature_dim, seed=cfg.seed)
  with jax.set_mesh(mesh):
    batch_arrays = shd.global_batch(
        {k: v[rows] for k, v in source.global_batch_at(0).items()}, rows, mesh)
    kernels.TRACED.clear()
    t0 = time.perf_counter()
    compiled = step.lower(state, batch_arrays, dist.teacher_params).compile()
    compile_s = time.perf_counter() - t0
    # Which hardware kernels the precision policy put into this step: none on a
    # GPU or TPU, so an accelerator figure is never a CPU kernel's.
    cpu_kernels = dict(kernels.TRACED)
    for _ in range(b.warmup_steps):
      state, aux = compiled(state, batch_arrays, dist.teacher_params)
    jax.block_until_ready((state, aux))
    times = []
    for _ in range(b.timed_steps):
      t0 = time.perf_counter()
      state, aux = compiled(state, batch_arrays, dist.teacher_params)
      jax.block_until_ready(aux)
      times.append(time.perf_counter() - t0)
  loss = float(aux["loss"])
  if not np.isfinite(loss):
    raise FloatingPointError(f"benchmark step produced a non-finite loss: {loss}")
  times = np.asarray(times)
  med, p90 = float(np.median(times)), float(np.percentile(times, 90))
  fl = analytic_flops(cfg, b.frames, b.tokens, teacher.config)
  step_flops = fl["step"] * batch
  xla = _xla_flops(compiled)
  peak, peak_src = ((b.peak_flops, "config") if b.peak_flops > 0 else
                    hardware.device_peak(dist.policy.dtype, jax.device_count()))
  achieved = step_flops / med
  trainable = int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params)))
  extra = {"allreduce_s": allreduce_seconds(mesh, trainable)} if b.collectives else {}
  return {
      "mesh": dict(mesh.shape), "mesh_spec": mesh_spec, "dtype": dtype_name,
      "precision": dist.policy.describe(), "cpu_kernels": cpu_kernels, "global_batch": batch,
      "per_device_batch": batch // shd.batch_parallelism(mesh), "frames": b.frames,
      "tokens": b.tokens,
      "student_frames_after_conv": conv_lengths(b.frames, cfg.student.conv_strides)[-1],
      "teacher": {"layers": teacher.config.num_hidden_layers,
                  "hidden": teacher.config.hidden_size, "source": cfg.teacher.source},
      "student": {"d_model": cfg.student.d_model, "layers": cfg.student.num_layers},
      "devices": jax.device_count(), "processes": jax.process_count(),
      "device_kind": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
      "host": platform.node(), "jax_version": jax.__version__,
      "compile_s": compile_s, "step_time_median_s": med, "step_time_p90_s": p90,
      "examples_per_s": batch / med, "audio_frames_per_s": batch * b.frames / med,
      "text_tokens_per_s": batch * b.tokens / med,
      "analytic_flops_per_step": step_flops, "analytic_flops_by_part_per_example": fl,
      "xla_flops_per_step": xla, "xla_over_analytic": (xla / step_flops) if xla else None,
      "achieved_flops_per_s": achieved, "peak_flops_per_s": peak, "peak_source": peak_src,
      "mfu": achieved / peak if peak and np.isfinite(peak) else None,
      "memory": memory(compiled),
      "train_state_bytes_per_device": state_bytes_per_device(state),
      "trainable_parameters": trainable, "final_loss": loss,
      "timed_steps": int(b.timed_steps), **extra,
  }


def bench_input(config, teacher) -> dict:
  """The loader alone, then the step fed by it vs a fixed batch (prepared data)."""
  from data_pipelines import dataset, loaders  # pylint: disable=import-outside-toplevel
  b = config.benchmark
  batch, dtype = int(b.batch_sizes[0]), b.dtypes[0]
  dist, state, step, mesh, rows, _ = build_run(config, b.meshes[0], dtype, batch, teacher)
  ds = dataset.PreparedDataset(b.data_path)
  d = config.data
  _, loader, kind = loaders.make_loader(
      ds, ds.index.rows_of(d.split), batch, rows, seed=config.seed, max_frames=b.frames,
      max_tokens=b.tokens, reader=d.reader, threads=d.reader_threads,
      shuffle_buffer=d.shuffle_buffer)
  strip = lambda x: {k: v for k, v in x.items() if not k.startswith("count_")}
  it = loader.iterator(0)
  for _ in range(5):  # warm-up: opening shards, thread pool
    next(it)
  t0, nbytes = time.perf_counter(), 0
  for _ in range(b.reader_batches):
    nbytes += sum(v.nbytes for v in strip(next(it)).values())
  dt = time.perf_counter() - t0
  out = {"data": ds.path, "format": ds.format, "reader": kind, "batch": batch, "dtype": dtype,
         "frames": b.frames,
         "tokens": b.tokens, "reader_examples_per_s": b.reader_batches * batch / dt,
         "reader_mb_per_s": nbytes / dt / 2 ** 20}
  fixed = shd.global_batch(strip(next(it)), rows, mesh)
  with jax.set_mesh(mesh):
    state, aux = step(state, fixed, dist.teacher_params)  # compile
    jax.block_until_ready(aux)
    seconds, block = {"fixed_batch": 0.0, "prepared_loader": 0.0}, 5
    rounds = max(1, b.timed_steps // block)
    for _ in range(rounds):
      for mode in seconds:
        t0 = time.perf_counter()
        for _ in range(block):
          x = fixed if mode == "fixed_batch" else shd.global_batch(strip(next(it)), rows, mesh)
          state, aux = step(state, x, dist.teacher_params)
        jax.block_until_ready(aux)
        seconds[mode] += time.perf_counter() - t0
  for mode, sec in seconds.items():
    out[f"step_examples_per_s_{mode}"] = rounds * block * batch / sec
  out["end_to_end_over_fixed"] = (out["step_examples_per_s_prepared_loader"] /
                                  out["step_examples_per_s_fixed_batch"])
  out["reader_over_step"] = out["reader_examples_per_s"] / out["step_examples_per_s_fixed_batch"]
  return out


def _table(results: list[dict]) -> str:
  head = ("| mesh (data x fsdp) | dtype | batch | step ms (p50/p90) | examples/s | frames/s "
          "| tokens/s | compile s | TFLOP/s | MFU | XLA/analytic | step MiB/device "
          "| CPU kernels in step |")
  lines = [head, "|" + "---|" * 13]
  for r in results:
    mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a"
    ratio = f"{r['xla_over_analytic']:.2f}" if r["xla_over_analytic"] else "n/a"
    mem = r["memory"].get("total_bytes", 0) / 2 ** 20
    lines.append(
        f"| {r['mesh_spec']} | {r['dtype']} | {r['global_batch']} | "
        f"{1e3 * r['step_time_median_s']:.1f} / {1e3 * r['step_time_p90_s']:.1f} | "
        f"{r['examples_per_s']:.1f} | {r['audio_frames_per_s']:.0f} | "
        f"{r['text_tokens_per_s']:.0f} | {r['compile_s']:.1f} | "
        f"{r['achieved_flops_per_s'] / 1e12:.3f} | {mfu} | {ratio} | {mem:.0f} | "
        f"{sum(r['cpu_kernels'].values())} |")
  return "\n".join(lines)


def _plot(results: list[dict], path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
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
  fs.save_figure(fig, path)
  plt.close(fig)


def run(config, layout) -> list[dict]:
  b = config.benchmark
  out = layout.stage("benchmark")
  if b.input not in ("synthetic", "prepared"):
    raise ValueError(f"benchmark.input must be 'synthetic' or 'prepared', got {b.input!r}")
  if b.input == "prepared" and not b.data_path:
    raise ValueError("benchmark.input=prepared needs --config.benchmark.data_path=<prepared dir>")
  teacher = teacher_lib.load_teacher(config.teacher, layout.teacher_dir(config), seed=config.seed)
  stamp = time.strftime("%Y%m%d-%H%M%S")
  results = []
  for dtype_name in b.dtypes:
    for mesh_spec in b.meshes:
      for batch in b.batch_sizes:
        logging.info("benchmark: mesh %s dtype %s batch %d", mesh_spec, dtype_name, batch)
        r = bench_one(config, mesh_spec, dtype_name, int(batch), teacher)
        results.append(r)
        if jax.process_index() == 0:
          name = f"{stamp}_{mesh_spec}_{dtype_name}_b{batch}.json".replace("-1", "all")
          fs.write_json(fs.join(out, name), r, indent=2)
        logging.info("benchmark: %.2f examples/s, step %.1f ms, compile %.1f s, MFU %s",
                     r["examples_per_s"], 1e3 * r["step_time_median_s"], r["compile_s"],
                     f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a")
  table = _table(results)
  text = (f"\n## {stamp} on {results[0]['device_kind']} x {results[0]['devices']}\n\n"
          f"{b.frames} frames, {b.tokens} tokens, synthetic batch; compile excluded\n\n{table}\n")
  if b.input == "prepared":
    r = bench_input(config, teacher)
    results.append({"input": r})
    text += (f"\nInput ({r['data']}, batch {r['batch']}, {r['dtype']}): loader "
             f"{r['reader_examples_per_s']:.0f} examples/s ({r['reader_mb_per_s']:.0f} MB/s), "
             f"{r['reader_over_step']:.0f}x the step; step fed by the loader "
             f"{r['step_examples_per_s_prepared_loader']:.2f} vs fixed batch "
             f"{r['step_examples_per_s_fixed_batch']:.2f} examples/s "
             f"({100 * r['end_to_end_over_fixed']:.0f} %)\n")
    if jax.process_index() == 0:
      fs.write_json(fs.join(out, f"{stamp}_input.json"), r, indent=2)
  print(text)
  if jax.process_index() == 0:
    fs.append_text(fs.join(out, "results.md"), text)
    _plot([r for r in results if "mesh_spec" in r], fs.join(out, "throughput.png"))
  return results
