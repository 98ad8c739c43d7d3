r"""Preparation throughput: audio-hours per core-hour on the Beam engine and the
process pool, with 1 and 2 local workers, and what 10 k hours would take.

    python -m data_pipelines.bench_prepare --manifest=../shared/data/audio/pairs_real/mini_librispeech/manifest.csv \
        --limit=270 --out=runs/bench_prepare

Each run prepares the same utterances into a fresh directory (nothing cached), so
the time is feature extraction plus the pipeline's own start-up; the shards are
written after it and are not part of the rate. Results: `<out>/results.json`,
`<out>/results.md`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time


def run_one(records, out: str, engine: str, workers: int) -> dict:
  from data_pipelines.prepare import PrepareOptions, prepare  # pylint: disable=import-outside-toplevel
  shutil.rmtree(out, ignore_errors=True)
  t0 = time.perf_counter()
  rep = prepare(records, out, PrepareOptions(name="bench", engine=engine, num_workers=workers,
                                             filter_pairs=True, file_format="tfrecord",
                                             progress=False))
  hours = rep["audio_seconds_extracted"] / 3600
  busy = rep["extraction_wall_seconds"] * workers / 3600
  return {"engine": engine, "workers": workers, "utterances": rep["extracted"],
          "audio_hours": hours, "extraction_wall_s": rep["extraction_wall_seconds"],
          "total_s": time.perf_counter() - t0,
          "audio_hours_per_core_hour": hours / busy if busy else None}


def main(argv) -> dict:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from data_pipelines.adapters import read_manifest  # pylint: disable=import-outside-toplevel
  from mced_jax.runtime import cli  # pylint: disable=import-outside-toplevel
  fv = flags.FlagValues()
  flags.DEFINE_string("manifest", "../shared/data/audio/pairs_real/mini_librispeech/manifest.csv",
                      "pairs to prepare", flag_values=fv)
  flags.DEFINE_integer("limit", 270, "first N utterances (0: all)", flag_values=fv)
  flags.DEFINE_string("out", "runs/bench_prepare", "work and results directory", flag_values=fv)
  flags.DEFINE_list("engines", ["beam", "pool"], "engines to time", flag_values=fv)
  cli.parse(fv, argv, "usage: python -m data_pipelines.bench_prepare [--manifest=CSV] ...",
            __doc__)
  records = read_manifest(fv.manifest)
  records = records[:fv.limit] if fv.limit else records
  cores = len(os.sched_getaffinity(0))
  results = {"date": time.strftime("%Y-%m-%d"), "manifest": fv.manifest, "cores": cores,
             "runs": []}
  for engine in fv.engines:
    for workers in (1, 2):
      if workers > cores:
        continue
      r = run_one(read_manifest(fv.manifest)[:len(records)], os.path.join(fv.out, "work"),
                  engine, workers)
      results["runs"].append(r)
      print(json.dumps(r))
  from data_pipelines.bench_input import write_results  # pylint: disable=import-outside-toplevel
  return write_results(results, report(results), fv.out)


def report(results: dict) -> str:
  lines = [f"Preparation, {results['date']}, {results['cores']} cores, "
           f"`{results['manifest']}`:", "",
           "| engine | workers | audio (h) | extraction wall (s) | audio-h per core-h | "
           "scaling 1 -> 2 |", "|---|---|---|---|---|---|"]
  from data_pipelines.bench_input import scaling_rows  # pylint: disable=import-outside-toplevel
  by = {}
  for eng, rs, w, r, scale in scaling_rows(results["runs"], "engine", "workers",
                                           lambda r: 1.0 / r["extraction_wall_s"]):
    by[eng] = rs
    lines.append(f"| {eng} | {w} | {r['audio_hours']:.2f} | {r['extraction_wall_s']:.0f} | "
                 f"{r['audio_hours_per_core_hour']:.0f} | {scale} |")
  beam = by.get("beam", {}).get(2) or by.get("beam", {}).get(1)
  if beam:
    rate = beam["audio_hours_per_core_hour"]
    lines += ["", f"10 k hours at {rate:.0f} audio-hours per core-hour: "
              f"{10_000 / rate:,.0f} core-hours; on 100 workers of 8 cores "
              f"{10_000 / rate / 800:.1f} h, on 1,000 such workers {10_000 / rate / 8000 * 60:.0f} min."]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main(sys.argv)
