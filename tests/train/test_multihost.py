"""Multi-host on real prepared data: real processes on localhost (gloo CPU
collectives), a real prepared corpus (the demo: espeak-ng speech, IS16 features,
variable lengths over 4 frame buckets, 2 shards per part), in both shard formats,
every stage's multi-host path:

  * ArrayRecord: distillation on 2 processes x 4 devices (FSDP 4x2 mesh), stopped
    by SIGTERM (one host signalled) mid-epoch and resumed on 2 processes, equals
    the uninterrupted 1 process x 8 devices run step by step over 14 steps that
    cross 3 bucket groups and several epochs (rtol 1e-5);
  * TFRecord through tf.data (each host reads its own shards): 2 processes x 4
    devices equal 1 x 8 over 12 steps, and the job resumed on 1 process (another
    process count) goes on equal to the end;
  * 4 processes x 2 devices on a hybrid (DCN) mesh, started the way srun starts
    them (SLURM variables, jax.distributed auto-detection), equal 1 x 8 over 2 steps;
  * fine-tuning on 2 processes gives the metrics of 1 process;
  * the classifier exported from the 2-process FSDP run loads in mced_jax.tools.predict
    and predicts what the 1-process export predicts.
The model is the tiny test config cut to 2 teacher and 2 student layers: these
runs are about data, hosts and shapes, and compilation dominates their time.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from data_pipelines.batch_plan import BatchPlan
from data_pipelines.dataset import PreparedDataset
from tests.data_pipelines.fixtures import demo_in_both_formats, write_wav
from mced_jax.runtime.writers import read_jsonl
from tests.train.test_resume import ROOT
from tests.conftest import xla_flags
from tests.helpers import output, outputs, spawn

BUCKETS = (200, 260, 320, 400)
STEPS = 14


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def plan_of(path):
  ds = PreparedDataset(path)
  rows = ds.index.rows_of("train+validation+test")
  return BatchPlan(ds.index.shard[rows], ds.index.bucket[rows], ds.index.buckets,
                   ds.index.num_shards, 8, 0, max_frames=400)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  out = demo_in_both_formats(tmp_path_factory.mktemp("demo"), per_class_per_voice=2,
                             num_workers=2, num_shards=2, frame_buckets=BUCKETS, max_frames=400)
  plan = plan_of(out["array_record"])
  assert len(plan.groups) >= 3, f"the demo corpus should give >= 3 bucket groups: {plan.groups}"
  return out


@pytest.fixture(scope="module")
def prepared(corpus):
  return corpus["array_record"]


def args(workdir, data, *extra):
  return [sys.executable, "-m", "mced_jax.main", "--config=configs/mced.py:tiny",
          f"--workdir={workdir}", "--config.stages=distill,finetune",
          "--config.data.source=prepared", f"--config.data.path={data}",
          "--config.data.split=train+validation+test", "--config.data.max_frames=400",
          f"--config.data.frame_buckets={BUCKETS}", "--config.data.max_tokens=24",
          "--config.teacher.vocab_size=30522", "--config.distill.batch_size=8",
          f"--config.distill.num_steps={STEPS}", "--config.distill.log_every=1",
          "--config.distill.checkpoint_every=100", "--config.distill.preemption_check_every=1",
          f"--config.finetune.data_path={data}", "--config.finetune.epochs=3",
          "--config.finetune.batch_size=8", "--config.finetune.eval_batch_size=8",
          "--config.finetune.crop_frames=200", "--config.mesh.fsdp=2",
          "--config.teacher.num_layers=2", "--config.student.num_layers=2",
          "--config.distill.teacher_layers=(1,2)", "--config.distill.student_layers=(1,2)",
          # fp32: on a CPU with bf16 units `auto` picks bf16, whose rounding differs
          # with each mesh's reduction order (~1e-4 after a dozen steps)
          "--config.dtype=float32", *extra]


def slurm_env(processes: int, i: int) -> dict:
  """What srun sets for task i of a one-node job: jax.distributed's SLURM detection
  derives the coordinator (first node, a port from the job id) from it."""
  for port in range(61440, 65536):  # SLURM's coordinator port: job id % 4096 + 61440
    with socket.socket() as s:
      try:
        s.bind(("127.0.0.1", port))
      except OSError:
        continue
    break
  return {"SLURM_JOB_ID": str(port - 61440 + 4096 * 7), "SLURM_STEP_NODELIST": "localhost",
          "SLURM_NTASKS": str(processes), "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i),
          "SLURM_STEP_NUM_NODES": "1"}


def launch(workdir, data, processes: int, devices: int, *extra, wait=True, slurm=False):
  env = dict(os.environ, XLA_FLAGS=xla_flags(devices),
             JAX_PLATFORMS="cpu")
  envs = [env] * processes
  if processes == 1:
    cmd = [args(workdir, data, *extra)]
  elif slurm:  # the README's srun command: --config.distributed.auto=True
    cmd = [args(workdir, data, "--config.distributed.auto=True", *extra)] * processes
    first = slurm_env(processes, 0)
    envs = [dict(env, **{**first, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)})
            for i in range(processes)]
  else:
    port = free_port()
    cmd = [args(workdir, data, f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                f"--config.distributed.num_processes={processes}",
                f"--config.distributed.process_id={i}", *extra) for i in range(processes)]
  procs = [spawn(c, e, ROOT) for c, e in zip(cmd, envs)]
  if not wait:
    return procs
  return finish(procs)


# Generous: 4 processes sharing 2 cores with the other test worker ran 141 s alone but
# over 600 s in the full suite on an AVX2 machine; only a hang should reach this.
def finish(procs, timeout=1500):
  try:
    outs = outputs(procs, timeout)
  except subprocess.TimeoutExpired:
    # Kill them all, then show where each one stood: a hang is only diagnosable
    # from the last lines every process wrote.
    for q in procs:
      q.kill()
      q.wait()
    raise AssertionError(f"no result after {timeout} s; killed. Last lines:\n" + "\n".join(
        f"--- process {i}:\n{output(q)[-1500:]}" for i, q in enumerate(procs))) from None
  failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode]
  # The first error lines of every process come first: a process that fails drags
  # the others into a shutdown-barrier abort, whose noise fills the tails.
  assert not failed, f"processes {failed} failed:\n" + "\n".join(
      f"--- process {i} (exit {p.returncode}); first error lines:\n" + "\n".join(
          [ln for ln in out.splitlines() if "Error" in ln or "error" in ln][:8]) +
      f"\n... last lines:\n{out[-2000:]}"
      for i, (p, out) in enumerate(zip(procs, outs)))
  return outs


def losses(workdir):
  return [r["loss"] for r in read_jsonl(os.path.join(workdir, "distill", "metrics.jsonl"))
          if "loss" in r]


def finetune_runs(workdir):
  found = {}
  for d, _, files in os.walk(os.path.join(workdir, "finetune", "runs")):
    for f in files:
      if f.endswith(".json") and f.startswith("seed"):
        key = d.split("/runs/")[1].split("/")[1]  # runs/<setup>/<init key>/<fold>
        found[key.split("-")[0].split("_")[0]] = json.load(open(os.path.join(d, f)))
  return found


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory):
  """1 process x 8 devices, FSDP 4x2: distil + fine-tune."""
  work = str(tmp_path_factory.mktemp("one_by_eight"))
  launch(work, prepared, 1, 8)
  return work


def stop_midway(procs, workdir, after_steps: int):
  """SIGTERM to the last process once `after_steps` steps are logged; the hosts
  agree to stop at the same step, save and exit cleanly."""
  metrics = os.path.join(workdir, "distill", "metrics.jsonl")
  deadline = time.time() + 400
  while time.time() < deadline and all(p.poll() is None for p in procs):
    if os.path.exists(metrics) and len([r for r in read_jsonl(metrics) if "loss" in r]) >= (
        after_steps):
      break
    time.sleep(0.05)
  procs[-1].send_signal(signal.SIGTERM)
  return finish(procs)


def test_two_processes_resumed_equal_one_and_export_predicts_the_same(prepared, reference,
                                                                      tmp_path):
  work = str(tmp_path / "two_by_four")
  plan = plan_of(prepared)
  spe = plan.steps_per_epoch
  # stopping after >= spe + 1 steps is mid-epoch 2 (or later)
  outs = stop_midway(launch(work, prepared, 2, 4, wait=False), work, after_steps=spe + 1)
  assert "process 0 of 2" in outs[0] and "4 local / 8 global devices" in outs[0]
  assert "stop signal received" in outs[0]
  stopped = len(losses(work))
  assert spe < stopped < STEPS, stopped
  assert not os.path.exists(os.path.join(work, "finetune"))  # nothing ran past the stop
  outs = launch(work, prepared, 2, 4)
  assert f"restored step {stopped}" in outs[0]
  la, lb = losses(work), losses(reference)
  assert len(la) == len(lb) == STEPS
  np.testing.assert_allclose(la, lb, rtol=1e-5)
  # the steps crossed >= 3 bucket groups and >= 2 epochs (the plan every host derived)
  assert len({plan.group_at(s) for s in range(STEPS)}) >= 3 and STEPS > 2 * spe
  # fine-tuning on 2 processes: the same metrics as on 1
  ra, rb = finetune_runs(work), finetune_runs(reference)
  assert set(ra) == set(rb) == {"scratch", "distill"}
  for k in ra:
    assert ra[k]["best_epoch"] == rb[k]["best_epoch"], k
    for m in ("WA", "UAR", "F1", "WF1"):
      assert ra[k]["test"][m] == pytest.approx(rb[k]["test"][m], abs=1e-6), (k, m)
    np.testing.assert_allclose(ra[k]["test_probs"], rb[k]["test_probs"], atol=2e-4)
  # the 2-process FSDP export loads in predict and predicts like the 1-process one
  from mced_jax.tools import predict
  wavs = [write_wav(str(tmp_path / "in" / f"c{i}.wav"), 1.2 + 0.5 * i, seed=i,
                    f0=120 + 40 * i) for i in range(3)]
  got, skipped, _ = predict.predict_paths(os.path.join(work, "finetune", "model_mced"), wavs,
                                          progress=False)
  want, _, _ = predict.predict_paths(os.path.join(reference, "finetune", "model_mced"), wavs,
                                     progress=False)
  assert not skipped and len(got) == 3
  for g, w in zip(got, want):
    assert g["prediction"] == w["prediction"]
    np.testing.assert_allclose(list(g["probabilities"].values()),
                               list(w["probabilities"].values()), atol=2e-4)


def test_four_processes_on_a_hybrid_mesh_under_slurm_equal_one(prepared, reference, tmp_path):
  """Launched as srun would (SLURM_* variables, distributed.auto=True): JAX finds
  the 4 processes itself; the data axis spans them as a DCN axis."""
  work = str(tmp_path / "four_by_two")
  # 2 steps (one bucket group, one compilation per process): what this adds to the
  # 2-process test is the launch and the DCN mesh
  outs = launch(work, prepared, 4, 2, "--config.stages=distill", "--config.mesh.dcn_data=4",
                "--config.distill.stop_after=2", slurm=True)
  assert "process 0 of 4" in outs[0] and "2 local / 8 global devices" in outs[0]
  la = losses(work)
  assert len(la) == 2
  np.testing.assert_allclose(la, losses(reference)[:2], rtol=1e-5)


def test_tfrecords_on_two_processes_equal_one_and_resume_on_another_count(corpus, tmp_path):
  """tf.data over TFRecord shards, each host streaming its own shard files: 2 x 4
  equals 1 x 8 for 12 steps; the job then resumes on 1 process x 8 devices (a
  different process count) from the 2-process checkpoint and stays equal. (The
  1 x 8 run reads TFRecords too: tf.data shuffles a stream through a buffer, the
  ArrayRecord reader by a full permutation, so their batches differ.)"""
  data, ref = corpus["tfrecord"], str(tmp_path / "one_by_eight")
  outs = launch(ref, data, 1, 8, "--config.stages=distill")
  assert "tf.data reader" in outs[0]
  work = str(tmp_path / "two_then_one")
  outs = launch(work, data, 2, 4, "--config.stages=distill", "--config.distill.stop_after=12")
  assert "process 0 of 2" in outs[0] and "tf.data reader" in outs[0]
  np.testing.assert_allclose(losses(work), losses(ref)[:12], rtol=1e-5)
  outs = launch(work, data, 1, 8, "--config.stages=distill")
  assert "restored step 12" in outs[0]
  la, lb = losses(work), losses(ref)
  assert len(la) == len(lb) == STEPS
  np.testing.assert_allclose(la, lb, rtol=1e-5)
  plan = plan_of(data)
  assert len({plan.group_at(s) for s in range(STEPS)}) >= 3


def launch_each(argvs, devices: int = 4):
  """Processes with their own arguments, as one jax.distributed job."""
  port, n = free_port(), len(argvs)
  env = dict(os.environ, XLA_FLAGS=xla_flags(devices),
             JAX_PLATFORMS="cpu")
  return [spawn([sys.executable, "-m", "mced_jax.main", *a,
                 f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                 f"--config.distributed.num_processes={n}",
                 f"--config.distributed.process_id={i}"], env, ROOT) for i, a in enumerate(argvs)]


def test_hosts_reading_different_datasets_all_stop_and_say_which(corpus, tmp_path):
  """Host 1 points at another copy of the corpus (other shards): every host stops
  at start-up, naming which processes saw which dataset."""
  work = str(tmp_path / "mismatch")
  argvs = [args(work, corpus[fmt], "--config.stages=distill")
           for fmt in ("array_record", "tfrecord")]
  procs = launch_each([a[3:] for a in argvs])
  outs = outputs(procs, 600)
  for p, out in zip(procs, outs):
    assert p.returncode != 0, out[-2000:]
    assert "the prepared dataset at data.path differs between processes" in out, out[-3000:]
    assert "process(es) [0]" in out and "process(es) [1]" in out
  assert not os.path.exists(os.path.join(work, "distill", "metrics.jsonl"))


def test_teacher_cls_on_two_processes_equals_one(tmp_path):
  """Stage 3 of the teacher (emotion fine-tuning of a tiny BERT on a slice of the
  teacher text) on 2 processes x 4 devices gives the results of 1 x 8."""
  from tests.conftest import require_shared_data
  from tests.helpers import tiny_bert_dir
  require_shared_data()
  init = tiny_bert_dir(str(tmp_path / "tiny_bert"))
  shared = os.path.join(ROOT, "..", "shared", "data", "text")
  common = ["--config=configs/mced.py", "--config.stages=teacher_cls",
            f"--config.teacher_cls.init={init}", "--config.teacher_cls.max_train_examples=64",
            "--config.teacher_cls.max_eval_examples=32", "--config.teacher_cls.batch_size=8",
            "--config.teacher_cls.eval_batch_size=8", "--config.teacher_cls.log_every=1",
            f"--config.teacher_cls.xed_dir={shared}/xed",
            f"--config.teacher_cls.emotionlines_dir={shared}/emotionlines_friends",
            "--config.teacher_cls.meld_test_csv=", "--config.dtype=float32"]
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  env = dict(os.environ, XLA_FLAGS=xla_flags(8),
             JAX_PLATFORMS="cpu")
  p = subprocess.run([sys.executable, "-m", "mced_jax.main", *common, f"--workdir={one}"],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  outs = finish(launch_each([common + [f"--workdir={two}"]] * 2))
  assert "process 0 of 2" in outs[0]
  ra = json.load(open(os.path.join(one, "teacher_cls", "results.json")))
  rb = json.load(open(os.path.join(two, "teacher_cls", "results.json")))
  assert ra["best_epoch"] == rb["best_epoch"]
  for m in ("WA", "UAR", "F1", "WF1"):
    assert ra["test"][m] == pytest.approx(rb["test"][m], abs=1e-6), m
  la = [r["loss"] for r in read_jsonl(os.path.join(one, "teacher_cls", "metrics.jsonl")) if "loss" in r]
  lb = [r["loss"] for r in read_jsonl(os.path.join(two, "teacher_cls", "metrics.jsonl")) if "loss" in r]
  assert len(la) == len(lb) > 4
  np.testing.assert_allclose(la, lb, rtol=1e-5)
