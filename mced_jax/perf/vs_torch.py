r"""The distillation step side by side with the PyTorch peer, in interleaved rounds.

    python -m mced_jax.perf.vs_torch --torch_python=/tmp/torchref/venv/bin/python \
        --rounds=3 --dtypes=float32,bfloat16 --out=runs/vs_torch

Each round runs, for every dtype, the peer (`../shared/peers/torch_ref/bench_torch.py`,
`--bf16` = torch.autocast bf16) and then mced_jax (`configs/benchmark.py`), each in
its own process at the same shapes (BERT-base-shaped teacher, d512 x 6 student,
batch 16, 400 frames, 32 tokens, 2 threads by default). The host drifts between
rounds by more than the differences measured, so the ratio is taken per round and
the median over rounds is reported. "Best dtype" compares each side's fastest
dtype (median over rounds). Writes `rounds.jsonl` (one line per run, appended as
it finishes) and `report.md` with the machine (CPU model, cores, bf16 units).

Both sides are pinned to the same number of cores, one per physical core, taken
from the cores this process may use. On a many-core host `--lanes=N` runs N rounds
at once, each on its own cores (every lane runs the same sequence, so lanes load
the host alike for both sides). `--xla_bf16` also times mced_jax's bf16 step with
XLA's own CPU kernels (`config.matmul='xla'`, side `mced_jax_xla`) against the
custom ones.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from concurrent import futures

from mced_jax.kernels import precision

PEER = os.path.join("..", "shared", "peers", "torch_ref", "bench_torch.py")


def machine() -> dict:
  from data_pipelines.bench_input import cpu_name  # pylint: disable=import-outside-toplevel
  return {"cpu": cpu_name(), "cores": os.cpu_count(), "bf16_units": precision.cpu_has_bf16_units(),
          "host": platform.node(), "python": platform.python_version()}


def physical_cores(allowed=None, topology="/sys/devices/system/cpu") -> list[int]:
  """The CPUs this process may use, one per physical core (SMT siblings dropped),
  in order; all of them where the topology cannot be read."""
  allowed = sorted(os.sched_getaffinity(0) if allowed is None else allowed)
  seen, out = set(), []
  for cpu in allowed:
    try:
      with open(f"{topology}/cpu{cpu}/topology/thread_siblings_list", encoding="utf-8") as f:
        key = f.read().strip()
    except OSError:
      key = str(cpu)
    if key not in seen:
      seen.add(key)
      out.append(cpu)
  return out


def lanes_of(cores: list[int], threads: int, lanes: int) -> list[list[int]]:
  """Disjoint core sets of `threads` cores each, as many as asked and available."""
  if threads > len(cores):
    raise ValueError(f"--threads={threads} but only {len(cores)} physical cores are usable")
  n = min(lanes, len(cores) // threads)
  return [cores[i * threads:(i + 1) * threads] for i in range(n)]


def _pinned(cmd: list[str], cpus: list[int]) -> list[str]:
  return ["taskset", "-c", ",".join(map(str, cpus))] + cmd


def _last_json_line(text: str) -> dict:
  for line in reversed(text.strip().splitlines()):
    line = line.strip()
    if line.startswith("{"):
      return json.loads(line)
  raise ValueError("no JSON line in the peer's output")


def run_peer(torch_python: str, dtype: str, shapes: dict, peer: str, cpus: list[int]) -> dict:
  cmd = [torch_python, peer, "--batch", str(shapes["batch"]), "--frames", str(shapes["frames"]),
         "--tokens", str(shapes["tokens"]), "--teacher", "base", "--threads", str(len(cpus))]
  if dtype == "bfloat16":
    cmd.append("--bf16")
  cmd = _pinned(cmd, cpus)
  p = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if p.returncode != 0:
    raise RuntimeError(f"PyTorch peer failed ({' '.join(cmd)}):\n{p.stderr[-2000:]}")
  r = _last_json_line(p.stdout)
  return {"examples_per_s": float(r["examples_per_s"]), "step_ms": float(r["step_ms_median"])}


def run_mced(dtype: str, shapes: dict, workdir: str, cpus: list[int], matmul: str = "auto") -> dict:
  """XLA:CPU uses every core it may: pinned to `cpus` like the peer."""
  out = os.path.join(workdir, "benchmark")
  before = set(glob.glob(os.path.join(out, "*.json")))
  cmd = [sys.executable, "-m", "mced_jax.main", "--config=configs/benchmark.py",
         f"--workdir={workdir}", f"--config.benchmark.dtypes=('{dtype}',)",
         f"--config.benchmark.batch_sizes=({shapes['batch']},)",
         f"--config.benchmark.frames={shapes['frames']}",
         f"--config.benchmark.tokens={shapes['tokens']}", f"--config.matmul={matmul}"]
  cmd = _pinned(cmd, cpus)
  p = subprocess.run(cmd, capture_output=True, text=True, check=False)
  new = sorted(set(glob.glob(os.path.join(out, "*.json"))) - before)
  new = [f for f in new if not f.endswith("_input.json")]
  if p.returncode != 0 or not new:
    raise RuntimeError(f"mced_jax benchmark failed ({' '.join(cmd)}):\n{p.stderr[-2000:]}")
  with open(new[-1], encoding="utf-8") as f:
    r = json.load(f)
  return {"examples_per_s": float(r["examples_per_s"]),
          "step_ms": 1e3 * float(r["step_time_median_s"]), "precision": r["precision"]}


def by_round(runs: list[dict], dtype: str) -> dict:
  """{round: {side: examples/s}} of one dtype."""
  out = {}
  for r in runs:
    if r["dtype"] == dtype:
      out.setdefault(r["round"], {})[r["side"]] = r["examples_per_s"]
  return dict(sorted(out.items()))


def summarize(runs: list[dict], dtypes) -> dict:
  """Per dtype: the per-round ratios mced_jax / PyTorch and their median; and the
  best dtype of each side (highest median examples/s) with its ratio."""
  out = {"per_dtype": {}, "best": None}
  med = {}
  for d in dtypes:
    rounds = by_round(runs, d).values()
    ratios = [ex["mced_jax"] / ex["torch"] for ex in rounds if "mced_jax" in ex and "torch" in ex]
    xla = [ex["mced_jax_xla"] / ex["torch"] for ex in rounds if "mced_jax_xla" in ex and "torch" in ex]
    for side in ("mced_jax", "torch"):
      v = [r["examples_per_s"] for r in runs if r["dtype"] == d and r["side"] == side]
      if v:
        med[(side, d)] = statistics.median(v)
    out["per_dtype"][d] = {"ratios": ratios,
                           "median_ratio": statistics.median(ratios) if ratios else None}
    if xla:
      out["per_dtype"][d]["xla_ratios"] = xla
      out["per_dtype"][d]["xla_median_ratio"] = statistics.median(xla)
  best = {}
  for side in ("mced_jax", "torch"):
    cands = [(v, d) for (s, d), v in med.items() if s == side]
    if cands:
      best[side] = max(cands)
  if len(best) == 2:
    out["best"] = {"mced_jax": {"dtype": best["mced_jax"][1], "examples_per_s": best["mced_jax"][0]},
                   "torch": {"dtype": best["torch"][1], "examples_per_s": best["torch"][0]},
                   "ratio": best["mced_jax"][0] / best["torch"][0]}
  return out


def report(runs: list[dict], dtypes, info: dict, shapes: dict) -> str:
  s = summarize(runs, dtypes)
  lines = [f"# mced_jax vs PyTorch peer, {time.strftime('%Y-%m-%d')}", "",
           f"Machine: {info['cpu']}, {info['cores']} cores, bf16 units: "
           f"{'yes' if info['bf16_units'] else 'no'}. Shapes: batch {shapes['batch']}, "
           f"{shapes['frames']} frames, {shapes['tokens']} tokens, BERT-base-shaped teacher.", ""]
  xla = any(r["side"] == "mced_jax_xla" for r in runs)
  lines += (["| round | dtype | PyTorch ex/s | mced_jax ex/s | ratio | mced_jax, XLA's kernels | "
             "ratio |", "|---|---|---|---|---|---|---|"] if xla else
            ["| round | dtype | PyTorch ex/s | mced_jax ex/s | ratio |", "|---|---|---|---|---|"])
  rounds = {d: by_round(runs, d) for d in dtypes}
  for k in sorted({r["round"] for r in runs}):
    for d in dtypes:
      ex = rounds[d].get(k, {})
      if "torch" in ex and "mced_jax" in ex:
        row = (f"| {k} | {d} | {ex['torch']:.2f} | {ex['mced_jax']:.2f} | "
               f"{ex['mced_jax'] / ex['torch']:.2f}x |")
        if xla:
          row += (f" {ex['mced_jax_xla']:.2f} | {ex['mced_jax_xla'] / ex['torch']:.2f}x |"
                  if "mced_jax_xla" in ex else " | |")
        lines.append(row)
  lines.append("")
  for d, e in s["per_dtype"].items():
    if e["ratios"]:
      lines.append(f"- {d}: ratios " + ", ".join(f"{x:.2f}" for x in e["ratios"]) +
                   f"; median **{e['median_ratio']:.2f}x**")
    if e.get("xla_ratios"):
      lines.append(f"- {d} with XLA's own CPU kernels (`matmul='xla'`): ratios " +
                   ", ".join(f"{x:.2f}" for x in e["xla_ratios"]) +
                   f"; median **{e['xla_median_ratio']:.2f}x**")
  if s["best"]:
    b = s["best"]
    lines.append(f"- best dtype: mced_jax {b['mced_jax']['dtype']} "
                 f"({b['mced_jax']['examples_per_s']:.2f} ex/s) vs PyTorch {b['torch']['dtype']} "
                 f"({b['torch']['examples_per_s']:.2f} ex/s): **{b['ratio']:.2f}x**")
  return "\n".join(lines) + "\n"


def main(argv) -> int:
  from absl import flags  # pylint: disable=import-outside-toplevel
  fv = flags.FlagValues()
  flags.DEFINE_string("torch_python", "", "python of a venv with the peer's torch", flag_values=fv)
  flags.DEFINE_string("peer", PEER, "bench_torch.py of the peer", flag_values=fv)
  flags.DEFINE_integer("rounds", 3, "interleaved rounds", flag_values=fv)
  flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "dtypes, each side", flag_values=fv)
  flags.DEFINE_integer("threads", 2, "threads (cores) for each side", flag_values=fv)
  flags.DEFINE_integer("batch", 16, "global batch", flag_values=fv)
  flags.DEFINE_integer("frames", 400, "audio frames", flag_values=fv)
  flags.DEFINE_integer("tokens", 32, "text tokens", flag_values=fv)
  flags.DEFINE_string("out", "runs/vs_torch", "output dir", flag_values=fv)
  flags.DEFINE_integer("lanes", 1, "rounds run at once, each on its own cores", flag_values=fv)
  flags.DEFINE_bool("xla_bf16", False, "also time mced_jax bf16 with XLA's own CPU kernels",
                    flag_values=fv)
  fv(argv)
  if not fv.torch_python:
    print("--torch_python=<venv python with torch> is required (peer setup: "
          "../shared/peers/torch_ref/README.md)", file=sys.stderr)
    return 2
  if not os.path.exists(fv.peer):
    print(f"PyTorch peer {fv.peer} not found", file=sys.stderr)
    return 2
  bad = [d for d in fv.dtypes if d not in ("float32", "bfloat16")]
  if bad:
    print(f"--dtypes: unknown {bad}; known: float32, bfloat16", file=sys.stderr)
    return 2
  os.makedirs(fv.out, exist_ok=True)
  shapes = {"batch": fv.batch, "frames": fv.frames, "tokens": fv.tokens}
  info = machine()
  try:
    lanes = lanes_of(physical_cores(), fv.threads, fv.lanes)
  except ValueError as e:
    print(e, file=sys.stderr)
    return 2
  free = list(lanes)  # core sets not running a round now
  lock = threading.Lock()
  runs, failed = [], []
  log = os.path.join(fv.out, "rounds.jsonl")

  def one_round(k: int):
    with lock:
      cpus = free.pop()
    try:
      for d in fv.dtypes:
        sides = ["torch", "mced_jax"] + (["mced_jax_xla"] if fv.xla_bf16 and d == "bfloat16" else [])
        for side in sides:
          t0 = time.time()
          try:
            if side == "torch":
              r = run_peer(fv.torch_python, d, shapes, fv.peer, cpus)
            else:
              r = run_mced(d, shapes, os.path.join(fv.out, "mced", f"round{k}"), cpus,
                           matmul="xla" if side == "mced_jax_xla" else "auto")
          except RuntimeError as e:  # one failed run costs its ratio, not the other rounds
            print(f"round {k} {d} {side} failed: {e}", file=sys.stderr, flush=True)
            with lock:
              failed.append((k, d, side))
            continue
          r.update(round=k, dtype=d, side=side, cpus=cpus, wall_s=time.time() - t0, **info)
          with lock:
            runs.append(r)
            with open(log, "a", encoding="utf-8") as f:
              f.write(json.dumps(r) + "\n")
          print(f"round {k} {d:8s} {side:12s} {r['examples_per_s']:6.2f} ex/s "
                f"({r['step_ms']:.0f} ms/step, cores {cpus})", flush=True)
    finally:
      with lock:
        free.append(cpus)

  with futures.ThreadPoolExecutor(max_workers=len(lanes)) as pool:
    for f in [pool.submit(one_round, k) for k in range(1, fv.rounds + 1)]:
      f.result()
  text = report(runs, fv.dtypes, info, shapes)
  if failed:
    text += f"- failed runs (no ratio): {', '.join(f'round {k} {d} {s}' for k, d, s in failed)}\n"
  with open(os.path.join(fv.out, "report.md"), "w", encoding="utf-8") as f:
    f.write(text)
  print("\n" + text)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
