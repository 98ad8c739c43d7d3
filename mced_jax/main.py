"""Entry point: `python -m mced_jax.main --config=configs/mced.py --workdir=DIR`.

Runs the comma-separated `config.stages` in order (the table is mced_jax/stages.py).
Any config field can be overridden with `--config.a.b=value`; unknown keys and
ill-typed values are rejected by the flag parser before anything runs. The work
dir may be a URL (gs://bucket/run).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a get_config() file, e.g. configs/mced.py[:variant].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/mced", "Directory (or URL) for checkpoints, "
                               "metrics and results; a re-run resumes from it.")


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
  from mced_jax.runtime import host_memory  # pylint: disable=import-outside-toplevel
  host_memory.keep_freed_memory(config.get("host_malloc", "system"))  # before XLA starts
  from mced_jax import stages# pylint: disable=import-outside-toplevel
  try:
    names = stages.parse(config.stages)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  import jax  # pylint: disable=import-outside-toplevel
  from mced_jax.runtime import distributed# pylint: disable=import-outside-toplevel
  from mced_jax.layout import Layout  # pylint: disable=import-outside-toplevel
  distributed.initialize(config.distributed)
  logging.info("mced_jax: %d process(es), %d device(s): %s", jax.process_count(),
               jax.device_count(), jax.devices()[0].platform)
  logging.info("host malloc: %s", host_memory.STATE["reason"])
  stages.check_multihost(names)
  layout = Layout(_WORKDIR.value)
  from mced_jax.runtime import preemption# pylint: disable=import-outside-toplevel
  # One handler for the whole job: a signal between or inside stages stops the job
  # at the next safe point, and no later stage starts.
  with preemption.PreemptionGuard():
    for name in names:
      logging.info("=== stage %s (workdir %s)", name, layout.root)
      stages.run(name, config, layout)
      if preemption.stop_requested():
        rest = names[names.index(name) + 1:]
        logging.warning("stop signal received: the job stops here%s; re-run the same "
                        "command to resume", f" (not starting {rest})" if rest else "")
        break


def entry():
  flags.mark_flags_as_required(["config"])
  app.run(main)


if __name__ == "__main__":
  sys.exit(entry())
