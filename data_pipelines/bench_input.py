r"""Input-pipeline benchmark: examples/s and MB/s at paper shapes, and the plan at scale.

    python -m data_pipelines.bench_input --out=runs/bench_input

1. A prepared dataset at the paper's shapes (400 frames of 130 float16 features,
   32 WordPieces; SYNTHETIC values, written through the real preparation with a
   pre-filled feature cache), in both shard formats.
2. Each reader (tf.data over TFRecords; random access over ArrayRecord) in its own
   process pinned to 1, then 2 cores (`os.sched_setaffinity`, as many reader
   threads), one host holding every row of a global batch: examples/s and MB/s of
   finished batches (padded float32 features, masks, ids), after a warm-up.
3. The plan for a 10 M-pair index (synthetic columns, 256 shards, 3 buckets,
   global batch 2048) built in a fresh process: index load, plan build and the
   first steps' example ids, wall time and peak resident memory.

Results go to `<out>/results.json` and `<out>/results.md`, with the per-host
projection: the measured examples/s per core times the cores of a host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

FRAMES, TOKENS, DIM = 400, 32, 130
# What one host must deliver at 40 % MFU on its chips (docs/scaling.md), and its cores.
NEED = {"v5p host (4 chips, 208 vCPUs)": (30_946, 208),
        "8-GPU H100/H200 node (112 cores)": (123_683, 112)}

READER = r"""
import json, os, sys, time
import numpy as np
cores, path, batch, steps = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
os.sched_setaffinity(0, cores)
from data_pipelines.loaders import make_loader
from data_pipelines.dataset import PreparedDataset
ds = PreparedDataset(path)
plan, loader, kind = make_loader(ds, ds.index.rows_of("train"), batch, np.arange(batch), seed=0,
                                 max_frames=400, max_tokens=32, threads=len(cores))
it = loader.iterator(0)
for _ in range(5):
  next(it)
t0, nbytes = time.perf_counter(), 0
for _ in range(steps):
  b = next(it)
  nbytes += sum(v.nbytes for k, v in b.items() if not k.startswith("count_"))
dt = time.perf_counter() - t0
print(json.dumps({"reader": kind, "format": ds.format, "cores": len(cores),
                  "examples_per_s": steps * batch / dt, "mb_per_s": nbytes / dt / 2 ** 20}))
"""

PLAN = r"""
import json, sys, time
import numpy as np
from data_pipelines import index as index_lib
from data_pipelines.batch_plan import BatchPlan
def hwm_mb():  # this process's peak resident memory (VmHWM; ru_maxrss survives exec)
  return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
path = sys.argv[1]
base = hwm_mb()
t0 = time.perf_counter()
with open(path, "rb") as f:
  ix = index_lib.Index.from_bytes(f.read())
t1 = time.perf_counter()
rows = ix.rows_of("train")
plan = BatchPlan(ix.shard[rows], ix.bucket[rows], ix.buckets, ix.num_shards, 2048, seed=0,
                 max_frames=1000)
t2 = time.perf_counter()
for s in range(10):
  plan.at(s * 997)
t3 = time.perf_counter()
print(json.dumps({"pairs": len(ix), "load_s": t1 - t0, "plan_s": t2 - t1,
                  "first_steps_s": t3 - t2, "steps_per_epoch": plan.steps_per_epoch,
                  "peak_rss_mb": hwm_mb(), "rss_before_mb": base}))
"""


def synthetic_dataset(out: str, n: int, fmt: str) -> str:
  """`n` paper-shaped examples prepared by data_pipelines.prepare from a filled
  feature cache (no audio is read)."""
  from data_pipelines import features as F  # pylint: disable=import-outside-toplevel
  from data_pipelines.prepare import PrepareOptions, prepare  # pylint: disable=import-outside-toplevel
  from data_pipelines.records import Utterance  # pylint: disable=import-outside-toplevel
  cache = os.path.join(out, "features")
  os.makedirs(cache, exist_ok=True)
  rng = np.random.default_rng(0)
  text = " ".join(["emotion"] * (TOKENS - 2))  # 30 words: 32 WordPieces with [CLS]/[SEP]
  recs = []
  with open(os.path.join(cache, F.DURATIONS), "w", encoding="utf-8") as log:
    for i in range(n):
      uid = f"syn{i:06d}"
      path = F.feature_path(cache, uid)
      if not os.path.exists(path):
        np.save(path, rng.standard_normal((FRAMES, DIM)).astype(np.float32))
      log.write(json.dumps({"utt_id": uid, "seconds": FRAMES / 100}) + "\n")
      recs.append(Utterance(uid, f"/synthetic/{uid}.wav", text=text, speaker=f"s{i % 50}"))
  prepare(recs, out, PrepareOptions(name="synthetic", file_format=fmt, num_shards=8,
                                    frame_buckets=(FRAMES,), max_frames=FRAMES, progress=False,
                                    num_workers=1))
  return out


def synthetic_index(path: str, n: int = 10_000_000, shards: int = 256) -> None:
  from data_pipelines import index as index_lib  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  frames = np.clip(rng.lognormal(np.log(400), 0.5, n), 150, 3000).astype(np.int32)
  buckets = (250, 500, 1000)
  bucket = np.minimum(np.searchsorted(buckets, frames), 2).astype(np.int8)
  position = np.zeros(n, np.int64)
  shard = rng.integers(0, shards, n).astype(np.int32)
  ix = index_lib.Index(frames=frames, num_tokens=np.full(n, 20, np.int16),
                       split=np.zeros(n, np.int8), bucket=bucket, shard=shard,
                       position=position, label=np.full(n, -1, np.int16), token_ids=None,
                       token_offsets=None, splits=("train",), buckets=buckets, labels=(),
                       num_shards=shards, file_format="tfrecord")
  with open(path, "wb") as f:
    f.write(ix.to_bytes())


def _run(code: str, *argv) -> dict:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  p = subprocess.run([sys.executable, "-c", code, *map(str, argv)], cwd=root, env=env,
                     capture_output=True, text=True, timeout=3600)
  if p.returncode:
    raise RuntimeError(p.stderr[-3000:])
  return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv) -> dict:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from mced_jax.runtime import cli  # pylint: disable=import-outside-toplevel
  fv = flags.FlagValues()
  flags.DEFINE_string("out", "runs/bench_input", "work and results directory", flag_values=fv)
  flags.DEFINE_integer("examples", 3000, "examples in the synthetic dataset", flag_values=fv)
  flags.DEFINE_integer("batch", 64, "global batch (one host holds every row)", flag_values=fv)
  flags.DEFINE_integer("steps", 300, "timed batches per reader and core count", flag_values=fv)
  flags.DEFINE_integer("plan_pairs", 10_000_000, "pairs in the synthetic index", flag_values=fv)
  cli.parse(fv, argv, "usage: python -m data_pipelines.bench_input [--out=DIR] ...", __doc__)
  os.makedirs(fv.out, exist_ok=True)
  cores = sorted(os.sched_getaffinity(0))
  results = {"machine": {"cores": len(cores), "cpu": cpu_name()}, "readers": [],
             "date": time.strftime("%Y-%m-%d")}
  for fmt in ("tfrecord", "array_record"):
    path = synthetic_dataset(os.path.join(fv.out, fmt), fv.examples, fmt)
    for k in (1, 2):
      if k > len(cores):
        continue
      r = _run(READER, json.dumps(cores[:k]), path, fv.batch, fv.steps)
      results["readers"].append(r)
      print(f"{r['reader']:>13} ({r['format']}), {k} core(s): {r['examples_per_s']:.0f} "
            f"examples/s, {r['mb_per_s']:.0f} MB/s")
  index_path = os.path.join(fv.out, "index_10m.npz")
  synthetic_index(index_path, fv.plan_pairs)
  results["plan"] = _run(PLAN, index_path)
  print(f"plan for {results['plan']['pairs']:,} pairs: {results['plan']}")
  return write_results(results, report(results), fv.out)


def write_results(results: dict, text: str, out: str) -> dict:
  """results.json and results.md in `out`; the report printed too."""
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
    f.write(text)
  print(text)
  return results


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      return next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    return "unknown"


def scaling_rows(runs, group: str, count: str, rate):
  """(group, {count: run}, count, run, "1 -> 2 speed-up" on the 2-count row) for a
  report's table; `rate(run)` is the speed (higher is faster)."""
  by = {}
  for r in runs:
    by.setdefault(r[group], {})[r[count]] = r
  for name, rs in by.items():
    for k, r in sorted(rs.items()):
      scale = f"{rate(rs[2]) / rate(rs[1]):.2f}x" if k == 2 and 1 in rs else ""
      yield name, rs, k, r, scale


def report(results: dict) -> str:
  m = results["machine"]
  lines = [f"Input pipeline, {results['date']}, {m['cpu']} ({m['cores']} cores); paper shapes: "
           f"{FRAMES} frames x {DIM} float16 features, {TOKENS} tokens.", "",
           "| reader | cores | examples/s | MB/s | scaling 1 -> 2 |", "|---|---|---|---|---|"]
  by = {}
  for name, rs, k, r, scale in scaling_rows(results["readers"], "reader", "cores",
                                            lambda r: r["examples_per_s"]):
    by[name] = rs
    lines.append(f"| {name} ({r['format']}) | {k} | {r['examples_per_s']:.0f} | "
                 f"{r['mb_per_s']:.0f} | {scale} |")
  tf1 = by.get("tf.data", {}).get(1)
  if tf1:
    per_core = tf1["examples_per_s"]
    lines += ["", f"Projected per host from tf.data's {per_core:.0f} examples/s per core:", "",
              "| host | needs (examples/s) | cores to feed it | share of the host's cores |",
              "|---|---|---|---|"]
    for host, (need, n) in NEED.items():
      k = need / per_core
      lines.append(f"| {host} | {need:,} | {k:.0f} | {100 * k / n:.0f} % |")
  p = results["plan"]
  lines += ["", f"Plan for {p['pairs']:,} pairs (256 shards, 3 buckets, global batch 2048) in a "
            f"fresh process: index load {p['load_s']:.1f} s, plan {p['plan_s']:.1f} s, 10 "
            f"steps' example ids {p['first_steps_s']:.2f} s; peak resident memory "
            f"{p['peak_rss_mb']:.0f} MB ({p['rss_before_mb']:.0f} MB before loading)."]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main(sys.argv)
