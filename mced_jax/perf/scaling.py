"""Scaling: measured weak scaling over local CPU processes, and a projection to
TPU pods and multi-node GPU clusters.

    python -m mced_jax.perf.scaling measure --processes=1,2,4 --out=runs/scaling
    python -m mced_jax.perf.scaling project [--measured=runs/scaling/weak_scaling.json]

`measure` launches the benchmark stage (configs/benchmark.py:scaling) on P local
processes with one CPU device each (gloo collectives), the per-process batch
fixed, and records step time, examples/s, and the time of one all-reduce of the
step's gradient bytes over the same mesh (its collective share).

`project` turns the step's analytic FLOPs per example and its gradient bytes into
examples/s per system from published peaks and interconnect bandwidths, at an
assumed MFU, with data-parallel all-reduce time not overlapped (conservative), and
says where IS16 extraction on the hosts (at its measured real-time factor) or the
feature reader would become the bottleneck.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

# Published figures (dense bf16 peak per chip; per-chip interconnect bandwidth, one
# direction, that an all-reduce can use; host CPU cores per chip).
SYSTEMS = {
    # TPU v5p: 459 TFLOP/s bf16; ICI 4,800 Gbit/s per chip (600 GB/s); a v5p host
    # (4 chips) has 208 vCPUs. v5p-N counts TensorCores: N/2 chips.
    "tpu v5p": {"peak": 459e12, "ici": 600e9, "dcn": None, "cores_per_chip": 52,
                "chips_per_host": 4},
    # DGX/HGX H100 or H200: 989 TFLOP/s bf16; NVLink 4 900 GB/s per GPU (both
    # directions: 450 GB/s each way); 1 x 400 Gbit/s InfiniBand NDR per GPU between
    # nodes (50 GB/s); 2 x 56-core Xeons per 8 GPUs.
    "h100/h200": {"peak": 989e12, "ici": 450e9, "dcn": 50e9, "cores_per_chip": 14,
                  "chips_per_host": 8},
}


def allreduce_seconds(grad_bytes: float, chips: int, per_host: int, ici: float,
                      dcn: float | None) -> float:
  """Ring all-reduce time; across nodes hierarchical (reduce-scatter in the node,
  all-reduce of each GPU's 1/per_host share over the network, all-gather)."""
  if chips <= 1:
    return 0.0
  local = min(chips, per_host)
  t = 2 * (local - 1) / local * grad_bytes / ici
  nodes = chips // per_host
  if nodes > 1 and dcn:
    t += 2 * (nodes - 1) / nodes * (grad_bytes / per_host) / dcn
  return t


def project(flops_per_example: float, grad_bytes: float, mean_seconds: float,
            rtf_per_core: float, feature_bytes: float, mfu: float = 0.4,
            per_chip_batch: int = 64) -> list[dict]:
  rows = []
  configs = [("v5p-8", "tpu v5p", 4), ("v5p-32", "tpu v5p", 16), ("v5p-128", "tpu v5p", 64),
             ("v5p-256", "tpu v5p", 128)]
  configs += [(f"{n} x 8 H100/H200", "h100/h200", 8 * n) for n in (1, 2, 4, 8)]
  for name, kind, chips in configs:
    s = SYSTEMS[kind]
    batch = per_chip_batch * chips
    compute = per_chip_batch * flops_per_example / (mfu * s["peak"])
    comm = allreduce_seconds(grad_bytes, chips, s["chips_per_host"], s["ici"], s["dcn"])
    step = compute + comm
    eps = batch / step
    hosts = max(1, chips // s["chips_per_host"])
    per_host = eps / hosts
    cores = s["cores_per_chip"] * min(chips, s["chips_per_host"])
    online = cores * rtf_per_core / mean_seconds  # examples/s IS16 on all host cores
    rows.append({"system": name, "chips": chips, "global_batch": batch,
                 "step_ms": 1e3 * step, "comm_share": comm / step, "examples_per_s": eps,
                 "examples_per_s_per_host": per_host, "online_is16_per_host": online,
                 "is16_bound": per_host > online,
                 "feature_mb_per_s_per_host": per_host * feature_bytes / 1e6})
  return rows


def project_table(rows) -> str:
  lines = ["| system | chips | global batch | step ms | all-reduce share | examples/s | "
           "examples/s per host | IS16 on the host's cores (examples/s) | features read "
           "per host |", "|" + "---|" * 9]
  for r in rows:
    lines.append(
        f"| {r['system']} | {r['chips']} | {r['global_batch']:,} | {r['step_ms']:.1f} | "
        f"{100 * r['comm_share']:.0f} % | {r['examples_per_s']:,.0f} | "
        f"{r['examples_per_s_per_host']:,.0f} | {r['online_is16_per_host']:,.0f}"
        f"{' (bottleneck)' if r['is16_bound'] else ''} | "
        f"{r['feature_mb_per_s_per_host']:,.0f} MB/s |")
  return "\n".join(lines)


# ---------------------------------------------------------------- measurement
def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def measure(processes, out: str, per_process_batch: int = 4, extra=()) -> list[dict]:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  results = []
  for p in processes:
    work = os.path.join(out, f"p{p}")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAX_PLATFORMS="cpu")
    port = _free_port()
    cmds = []
    for i in range(p):
      cmd = [sys.executable, "-m", "mced_jax.main", "--config=configs/benchmark.py:scaling",
             f"--workdir={work}", f"--config.benchmark.batch_sizes=({per_process_batch * p},)",
             *extra]
      if p > 1:
        cmd += [f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                f"--config.distributed.num_processes={p}", f"--config.distributed.process_id={i}"]
      cmds.append(cmd)
    procs = [subprocess.Popen(c, cwd=root, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for c in cmds]
    outs = [q.communicate()[0] for q in procs]
    if any(q.returncode for q in procs):
      raise RuntimeError(f"{p} processes failed:\n" + outs[0][-3000:])
    files = sorted(f for f in os.listdir(os.path.join(work, "benchmark")) if f.endswith(".json")
                   and "_input" not in f)
    r = json.load(open(os.path.join(work, "benchmark", files[-1]), encoding="utf-8"))
    results.append(r)
    print(f"{p} process(es): {r['examples_per_s']:.2f} examples/s, step "
          f"{1e3 * r['step_time_median_s']:.0f} ms, all-reduce {1e3 * r['allreduce_s']:.1f} ms",
          flush=True)
  base = results[0]["examples_per_s"] / results[0]["processes"]
  for r in results:
    r["weak_scaling_efficiency"] = r["examples_per_s"] / (r["processes"] * base)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "weak_scaling.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
  return results


def measured_table(results) -> str:
  lines = ["| processes | global batch | step ms (p50) | examples/s | efficiency | gradient "
           "all-reduce ms | all-reduce share of the step |", "|" + "---|" * 7]
  for r in results:
    lines.append(f"| {r['processes']} | {r['global_batch']} | "
                 f"{1e3 * r['step_time_median_s']:.0f} | {r['examples_per_s']:.2f} | "
                 f"{100 * r['weak_scaling_efficiency']:.0f} % | {1e3 * r['allreduce_s']:.1f} | "
                 f"{100 * r['allreduce_s'] / r['step_time_median_s']:.1f} % |")
  return "\n".join(lines)


def main(argv):
  from absl import flags  # pylint: disable=import-outside-toplevel
  fv = flags.FlagValues()
  flags.DEFINE_string("processes", "1,2,4", "process counts to measure", flag_values=fv)
  flags.DEFINE_string("out", "runs/scaling", "output directory", flag_values=fv)
  flags.DEFINE_integer("per_process_batch", 4, "examples per process and step",
                       flag_values=fv)
  flags.DEFINE_string("measured", "", "weak_scaling.json of a measurement (project)",
                      flag_values=fv)
  flags.DEFINE_float("mfu", 0.4, "assumed MFU of the projection", flag_values=fv)
  flags.DEFINE_float("rtf_per_core", 71.0, "IS16 extraction, seconds of audio per core-second "
                     "(measured: README, Data)", flag_values=fv)
  flags.DEFINE_float("mean_seconds", 4.0, "mean utterance length", flag_values=fv)
  rest = fv(list(argv))
  if len(rest) != 2 or rest[1] not in ("measure", "project"):
    raise ValueError("usage: python -m mced_jax.perf.scaling measure|project [flags]")
  if rest[1] == "measure":
    res = measure([int(p) for p in fv.processes.split(",")], fv.out, fv.per_process_batch)
    print(measured_table(res))
    return
  path = fv.measured or os.path.join(fv.out, "weak_scaling.json")
  r = json.load(open(path, encoding="utf-8"))[0]
  flops = r["analytic_flops_by_part_per_example"]["step"]
  grad_bytes = 4 * r["trainable_parameters"]
  feature_bytes = r["frames"] * 130 * 2 + r["tokens"] * 4  # float16 features, int32 ids
  print(f"step: {flops / 1e9:.1f} GFLOP per example ({r['frames']} frames, {r['tokens']} "
        f"tokens), {r['trainable_parameters'] / 1e6:.1f} M trainable parameters "
        f"({grad_bytes / 1e6:.0f} MB fp32 gradients); MFU {fv.mfu:.0%} assumed")
  print(project_table(project(flops, grad_bytes, fv.mean_seconds, fv.rtf_per_core,
                              feature_bytes, fv.mfu)))


if __name__ == "__main__":
  main(sys.argv)
