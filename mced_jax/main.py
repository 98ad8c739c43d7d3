"""Entry point: `python -m mced_jax.main --config=configs/mced.py --workdir=DIR`.

Runs the comma-separated `config.stages` in order. Any config field can be
overridden with `--config.a.b=value`; unknown keys and ill-typed values are
rejected by the flag parser before anything runs.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a get_config() file, e.g. configs/mced.py[:variant].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/mced", "Directory for checkpoints, "
                               "metrics and results; a re-run resumes from it.")

STAGES = ("data", "teacher_mlm", "teacher_cls", "distill", "finetune", "benchmark")


def run_stage(stage: str, config, workdir: str):
  if stage == "data":
    from data_pipelines import stage as data_stage  # pylint: disable=import-outside-toplevel
    return data_stage.run(config, workdir)
  if stage == "teacher_mlm":
    from mced_jax.train import teacher_mlm  # pylint: disable=import-outside-toplevel
    return teacher_mlm.train(config, os.path.join(workdir, "teacher_mlm"))
  if stage == "teacher_cls":
    from mced_jax.train import teacher_cls  # pylint: disable=import-outside-toplevel
    return teacher_cls.train(config, os.path.join(workdir, "teacher_cls"))
  if stage == "distill":
    from mced_jax.train import distill  # pylint: disable=import-outside-toplevel
    distill.resolve_inputs(config, workdir)
    return distill.train(config, os.path.join(workdir, "distill"))
  if stage == "finetune":
    from mced_jax import downstream  # pylint: disable=import-outside-toplevel
    return downstream.run(config, workdir)
  if stage == "benchmark":
    from mced_jax import benchmark  # pylint: disable=import-outside-toplevel
    return benchmark.run(config, os.path.join(workdir, "benchmark"))
  raise ValueError(f"unknown stage {stage!r}; known stages: {', '.join(STAGES)}")


def parse_stages(spec: str) -> list[str]:
  stages = [s.strip() for s in spec.split(",") if s.strip()]
  if not stages:
    raise ValueError("config.stages is empty")
  bad = [s for s in stages if s not in STAGES]
  if bad:
    raise ValueError(f"unknown stage(s) {bad} in config.stages={spec!r}; "
                     f"known: {', '.join(STAGES)}")
  return stages


class _QuietLibraries:
  """Drops INFO chatter from orbax/tensorstore (dozens of lines per checkpoint);
  their warnings and errors still show."""

  def filter(self, record):
    import logging as std_logging  # pylint: disable=import-outside-toplevel
    noisy = ("orbax" in record.pathname or "etils" in record.pathname)
    return not (noisy and record.levelno < std_logging.WARNING)


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/mced.py")
  import jax  # pylint: disable=import-outside-toplevel
  from mced_jax import distributed  # pylint: disable=import-outside-toplevel
  distributed.initialize(config.distributed)
  logging.info("mced_jax: %d process(es), %d device(s): %s", jax.process_count(),
               jax.device_count(), jax.devices()[0].platform)
  try:
    stages = parse_stages(config.stages)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  workdir = os.path.abspath(_WORKDIR.value)
  for stage in stages:
    logging.info("=== stage %s (workdir %s)", stage, workdir)
    run_stage(stage, config, workdir)


def entry():
  flags.mark_flags_as_required(["config"])
  app.run(main)


if __name__ == "__main__":
  sys.exit(entry())
