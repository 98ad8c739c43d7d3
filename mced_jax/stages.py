"""The stage table `mced_jax.main` dispatches on: name -> (module, function, what
it does, whether it runs multi-host). Each function takes (config, layout).
Modules are imported only when their stage runs (TensorFlow-free stages stay
TensorFlow-free)."""

from __future__ import annotations

import dataclasses
import importlib

import jax


@dataclasses.dataclass(frozen=True)
class Stage:
  module: str
  function: str
  description: str
  multihost: bool = True


STAGES = {
    "data": Stage("data_pipelines.stage", "run",
                  "build/prepare the corpus in config.data (IS16 features, WordPieces, "
                  "ArrayRecord shards)", multihost=False),
    "teacher_mlm": Stage("mced_jax.train.teacher_mlm", "train",
                         "teacher stage 2: continued masked-LM pretraining"),
    "teacher_cls": Stage("mced_jax.train.teacher_cls", "train",
                         "teacher stage 3: 5-class text emotion fine-tuning"),
    "distill": Stage("mced_jax.train.distill", "train",
                     "MCED distillation of the speech student"),
    "finetune": Stage("mced_jax.train.downstream", "run",
                      "downstream fine-tuning and evaluation (Tables 5-7)"),
    "benchmark": Stage("mced_jax.perf.benchmark", "run", "throughput of the distillation step"),
}


def parse(spec: str) -> list[str]:
  names = [s.strip() for s in spec.split(",") if s.strip()]
  if not names:
    raise ValueError("config.stages is empty")
  bad = [s for s in names if s not in STAGES]
  if bad:
    raise ValueError(f"unknown stage(s) {bad} in config.stages={spec!r}; "
                     f"known: {', '.join(STAGES)}")
  return names


def check_multihost(names) -> None:
  """Stages that cannot split their work over processes stop before anything runs
  instead of every host doing (and writing) the same thing."""
  if jax.process_count() == 1:
    return
  single = [n for n in names if not STAGES[n].multihost]
  if single:
    raise ValueError(f"stage(s) {single} run on one process only; prepare the data once "
                     "(python -m data_pipelines.prepare, or --config.stages=data on a single "
                     "host) and launch the multi-host job without them")


def run(name: str, config, layout):
  stage = STAGES[name]
  fn = getattr(importlib.import_module(stage.module), stage.function)
  return fn(config, layout)
