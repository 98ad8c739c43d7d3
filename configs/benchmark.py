"""Benchmark config: `python -m mced_jax.main --config=configs/benchmark.py`.

Times the distillation step on SYNTHETIC inputs at the paper's model sizes: a
randomly initialised BERT-base-shaped teacher (12 x 768; weights do not change the
cost) and the d512 x 6 student. Defaults are CPU-sized; for a GPU, e.g.
  --config.benchmark.batch_sizes="(64,128,256)" --config.benchmark.dtypes="('float32','bfloat16')"
  --config.benchmark.frames=400 --config.benchmark.tokens=64
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import mced  # noqa: E402  pylint: disable=wrong-import-position


def get_config(arg: str | None = None):
  if arg not in (None, "", "tiny", "scaling"):
    raise ValueError(f"unknown variant {arg!r}; known: tiny, scaling")
  c = mced.get_config("tiny" if arg == "tiny" else None)
  c.stages = "benchmark"
  if arg == "tiny":
    return c
  c.host_malloc = "keep"  # step-bound by design (configs/mced.py)
  c.teacher.source = "random"  # BERT-base shape from configs/mced.py
  c.distill.teacher_layers = (6, 8, 10, 12)  # the paper's BERT-base pairs
  c.distill.student_layers = (3, 4, 5, 6)
  c.distill.lambdas = (0.1, 0.1, 0.2, 0.3)
  c.benchmark.batch_sizes = (16,)
  c.benchmark.dtypes = ("float32", "bfloat16")
  c.benchmark.meshes = ("-1x1",)
  c.benchmark.frames = 400  # 4 s of audio at 100 frames/s
  c.benchmark.tokens = 32
  c.benchmark.warmup_steps = 2
  c.benchmark.timed_steps = 10
  if arg == "scaling":  # python -m mced_jax.perf.scaling measure: one device per process
    c.benchmark.dtypes = ("float32",)
    c.benchmark.warmup_steps = 1
    c.benchmark.timed_steps = 5
    c.benchmark.collectives = True
  return c
