"""Is the tf.data reader fast enough to feed the distillation step?

    python -m data_pipelines.reader_benchmark --data=runs/data/ravdess --batch=16

1. Reader alone: batches/s, examples/s and MB/s of feature data delivered (after
   warm-up), with tf.data's autotuned parallelism on this host.
2. The jitted distillation step at the same shapes with the benchmark's models
   (configs/benchmark.py: BERT-base-shaped teacher, d512 x 6 student), fed (a) from
   the reader and (b) from one fixed batch of identical shape: the end-to-end /
   fixed-batch ratio shows how much input costs the step.
Writes a JSON with every figure (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time



def reader_throughput(data: str, split: str, batch: int, frames: int, tokens: int,
                      n_batches: int, cache: bool) -> dict:
  from data_pipelines import input_pipeline as ip  # pylint: disable=import-outside-toplevel
  cfg = ip.ReaderConfig(batch_size=batch, max_frames=frames, max_tokens=tokens,
                        frame_buckets=(frames,), train=True, cache=cache)
  it = ip.make_dataset(data, split, cfg).as_numpy_iterator()
  for _ in range(5):  # warm-up: file opening, autotune
    next(it)
  t0, nbytes = time.perf_counter(), 0
  for _ in range(n_batches):
    b = next(it)
    nbytes += sum(v.nbytes for v in b.values())
  dt = time.perf_counter() - t0
  return {"batches_per_s": n_batches / dt, "examples_per_s": n_batches * batch / dt,
          "mb_per_s": nbytes / dt / 2 ** 20, "cache": cache}


def step_throughput(data: str, split: str, batch: int, frames: int, tokens: int,
                    n_steps: int, config_overrides: dict) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs"))
  import benchmark  # pylint: disable=import-outside-toplevel
  from data_pipelines import input_pipeline as ip  # pylint: disable=import-outside-toplevel
  from mced_jax import sharding as shd  # pylint: disable=import-outside-toplevel
  from mced_jax.train import distill  # pylint: disable=import-outside-toplevel
  config = benchmark.get_config()
  with config.unlocked():
    config.distill.batch_size = batch
    for k, v in config_overrides.items():
      node = config
      *path, leaf = k.split(".")
      for p in path:
        node = node[p]
      node[leaf] = type(node[leaf])(v)
  dist = distill.build(config)
  state = dist.init_state(jax.random.PRNGKey(0))
  step = dist.make_train_step()
  cfg = ip.ReaderConfig(batch_size=batch, max_frames=frames, max_tokens=tokens,
                        frame_buckets=(frames,), train=True)
  src = ip.TFRecordPairs(data, split, batch, cfg)
  it = src.iterator()
  fixed = shd.global_batch(next(it), dist.mesh)
  with jax.set_mesh(dist.mesh):
    state, aux = step(state, dist.teacher_params, fixed)  # compile
    jax.block_until_ready(aux)
    # The two feeds alternate in blocks of 5 steps, so drift in the host's speed
    # (this is often a VM) falls on both alike.
    seconds = {"fixed_batch": 0.0, "tfrecord_reader": 0.0}
    block = min(5, n_steps)
    for _ in range(max(1, n_steps // block)):
      for mode in seconds:
        t0 = time.perf_counter()
        for _ in range(block):
          b = fixed if mode == "fixed_batch" else shd.global_batch(next(it), dist.mesh)
          state, aux = step(state, dist.teacher_params, b)
        jax.block_until_ready(aux)
        seconds[mode] += time.perf_counter() - t0
    n = max(1, n_steps // block) * block
    out = {mode: n * batch / sec for mode, sec in seconds.items()}
  out["end_to_end_over_fixed"] = out["tfrecord_reader"] / out["fixed_batch"]
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", required=True, help="a prepared dataset dir")
  p.add_argument("--split", default="train")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--frames", type=int, default=400)
  p.add_argument("--tokens", type=int, default=32)
  p.add_argument("--reader_batches", type=int, default=200)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--skip_step", action="store_true", help="measure the reader only")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                 help="compute dtype of the step (bfloat16 on CPU = the cpu_bf16 recipe)")
  p.add_argument("--out", default=None, help="JSON output path")
  a = p.parse_args(argv)
  res = {"data": os.path.abspath(a.data), "batch": a.batch, "frames": a.frames,
         "tokens": a.tokens, "cpu_count": os.cpu_count()}
  res["reader"] = reader_throughput(a.data, a.split, a.batch, a.frames, a.tokens,
                                    a.reader_batches, cache=False)
  res["reader_cached"] = reader_throughput(a.data, a.split, a.batch, a.frames, a.tokens,
                                           a.reader_batches, cache=True)
  print(f"reader: {res['reader']['examples_per_s']:.0f} examples/s, "
        f"{res['reader']['mb_per_s']:.1f} MB/s (in-memory cache: "
        f"{res['reader_cached']['examples_per_s']:.0f} examples/s)")
  if not a.skip_step:
    res["step"] = step_throughput(a.data, a.split, a.batch, a.frames, a.tokens, a.steps,
                                  {"dtype": a.dtype})
    s = res["step"]
    res["reader_over_step"] = res["reader"]["examples_per_s"] / s["fixed_batch"]
    print(f"distill step (CPU): {s['fixed_batch']:.2f} examples/s on a fixed batch, "
          f"{s['tfrecord_reader']:.2f} examples/s fed by the reader "
          f"({100 * s['end_to_end_over_fixed']:.0f} %); the reader is "
          f"{res['reader_over_step']:.0f}x faster than the step")
  if a.out:
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
      json.dump(res, f, indent=1)
  return res


if __name__ == "__main__":
  main()
