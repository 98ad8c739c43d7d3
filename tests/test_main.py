"""The CLI: stages, overrides, clear errors, and the benchmark stage."""

import glob
import json
import os
import subprocess
import sys

import pytest

from mced_jax import stages
from tests.conftest import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
  env = dict(os.environ, XLA_FLAGS=xla_flags(1),
             JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "mced_jax.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_unknown_key_is_a_clear_error(tmp_path):
  p = run("--config=configs/mced.py:tiny", f"--workdir={tmp_path}",
          "--config.distill.no_such_key=3")
  assert p.returncode != 0
  assert "no_such_key" in p.stderr


def test_bad_value_is_a_clear_error(tmp_path):
  p = run("--config=configs/mced.py:tiny", f"--workdir={tmp_path}",
          "--config.distill.num_steps=lots")
  assert p.returncode != 0
  assert "num_steps" in p.stderr


def test_unknown_stage_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown stage"):
    stages.parse("distill,dance")
  assert stages.parse(" distill , benchmark") == ["distill", "benchmark"]


def test_benchmark_stage_writes_json_and_table(tmp_path):
  p = run("--config=configs/benchmark.py:tiny", f"--workdir={tmp_path}")
  assert p.returncode == 0, p.stderr[-3000:]
  assert "examples/s" in p.stdout and "MFU" in p.stdout
  files = glob.glob(str(tmp_path / "benchmark" / "*.json"))
  assert len(files) == 1
  r = json.load(open(files[0], encoding="utf-8"))
  for key in ("step_time_median_s", "step_time_p90_s", "examples_per_s",
              "audio_frames_per_s", "text_tokens_per_s", "compile_s", "mfu",
              "analytic_flops_per_step", "xla_flops_per_step", "memory",
              "train_state_bytes_per_device", "per_device_batch"):
    assert key in r, key
  assert r["examples_per_s"] > 0 and r["step_time_p90_s"] >= r["step_time_median_s"]
  assert r["memory"]["total_bytes"] > r["train_state_bytes_per_device"] > 0
  # The analytic count and XLA's agree to within a factor well below 2.
  assert 0.5 < r["xla_over_analytic"] < 2.0
  # On a CPU the precision policy puts its CPU kernels into the step, and says so.
  assert r["platform"] == "cpu" and sum(r["cpu_kernels"].values()) > 0, r["cpu_kernels"]
  assert os.path.exists(tmp_path / "benchmark" / "results.md")


@pytest.mark.parametrize("spec", ["mced.py", "mced.py:tiny", "ravdess.py", "ravdess.py:ablations",
                                  "paper.py:iemocap", "paper.py:meld", "benchmark.py",
                                  "ravdess_real.py:teacher", "ravdess_real.py:both,speaker,words",
                                  "ravdess_real.py:real,speaker,conf0.6,aug,ep30,pat8,folds5"])
def test_every_config_builds_with_known_stages_and_protocols(spec):
  import importlib.util  # pylint: disable=import-outside-toplevel
  from mced_jax.evaluation import protocols# pylint: disable=import-outside-toplevel
  name, _, arg = spec.partition(":")
  path = os.path.join(os.path.dirname(__file__), "..", "configs", name)
  mod_spec = importlib.util.spec_from_file_location(f"cfg_{name[:-3]}", path)
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  c = mod.get_config(arg or None)
  stages.parse(c.stages)
  assert c.finetune.protocol in protocols.PROTOCOLS
  assert set(str(c.finetune.tables).split(",")) <= {"5", "6", "7"}
  assert len(c.distill.teacher_layers) == len(c.distill.student_layers) == len(c.distill.lambdas)


def test_ravdess_real_finetune_only_parts_reuse_the_base_distillation():
  import importlib.util  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.dirname(__file__), "..", "configs", "ravdess_real.py")
  mod_spec = importlib.util.spec_from_file_location("cfg_ravdess_real", path)
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  base = mod.get_config("real,speaker,words")
  assert base.stages == "data,distill,finetune" and not base.finetune.init_dir
  c = mod.get_config("real,speaker,words,aug,ep30,pat8,folds5")
  assert c.stages == "finetune"
  assert c.finetune.init_dir == "runs/ravdess_real/real_speaker_words/distill/student"
  assert (c.finetune.epochs, c.finetune.patience, c.finetune.max_folds) == (30, 8, 5)
  assert c.finetune.augment.time_masks == 2 and c.distill.fl_tokens == "words"
  # Every pair set fine-tunes with RAVDESS's buckets, so one Student-MCED cache serves all.
  from mced_jax.evaluation import labelled# pylint: disable=import-outside-toplevel
  demo = mod.get_config("demo,speaker")
  assert tuple(demo.data.frame_buckets) != tuple(c.data.frame_buckets)
  assert labelled.frame_buckets(demo) == labelled.frame_buckets(c) == (250, 500, 1000, 1400, 1800)
  with pytest.raises(ValueError, match="unknown part 'bogus'"):
    mod.get_config("real,bogus")
  # Pooling is architecture: it distils its own student, shared by its fine-tuning parts.
  s = mod.get_config("demo,speaker,mstats,ep20,folds5")
  assert s.student.pooling == "mstats" and demo.student.pooling == "max"
  assert s.finetune.init_dir == "runs/ravdess_real/demo_speaker_mstats/distill/student"
