"""Where everything lives in a work dir, and what a config's inputs resolve to.

Stages ask the `Layout` for paths instead of building them, and the resolvers
return values instead of editing the config. The work dir may be local or a URL
(mced_jax.runtime.fs).

  WORKDIR/
    data/<corpus>/            prepared datasets (data stage; fine-tuning corpora)
    data/demo_corpus/         the generated demo corpus (wavs + manifest)
    data/demo_corpus_flat/    the same sentences, every class in the neutral prosody
    teacher_text/             the Teacher Text Emotion Dataset (JSONL splits)
    teacher_mlm/              stage 2: model/ (HF dir), checkpoints/, metrics
    teacher_cls/              stage 3: model/ (HF dir), results.json, confusion, ...
    distill/                  checkpoints/, metrics, student/ (exported student)
    distill_ablations/<name>/ Table 6 students
    finetune/                 tables, runs/ (cached runs), model_mced/, model_scratch/
    benchmark/                one JSON per run, results.md, throughput.png
    results.md                every downstream table
    <stage>/config.json       the resolved config of the stage's last run
"""

from __future__ import annotations

import dataclasses
import datetime

from mced_jax.runtime import fs


@dataclasses.dataclass(frozen=True)
class Layout:
  root: str

  def __post_init__(self):
    object.__setattr__(self, "root", fs.abspath(self.root))

  def path(self, *parts: str) -> str:
    return fs.join(self.root, *parts)

  # ---------------- stage outputs
  def stage(self, name: str) -> str:
    return self.path(name)

  def data(self, corpus: str) -> str:
    return self.path("data", corpus)

  @property
  def demo_corpus(self) -> str:
    return self.path("data", "demo_corpus")

  def demo_corpus_for(self, prosody: str) -> str:
    """The demo corpus spoken with `prosody` ("class": the default corpus)."""
    return self.demo_corpus if prosody == "class" else self.path("data", f"demo_corpus_{prosody}")

  @property
  def teacher_text(self) -> str:
    return self.path("teacher_text")

  @property
  def teacher_mlm_model(self) -> str:
    return self.path("teacher_mlm", "model")

  @property
  def teacher_cls_model(self) -> str:
    return self.path("teacher_cls", "model")

  @property
  def distilled_student(self) -> str:
    return self.path("distill", "student")

  def distill_ablation(self, name: str) -> str:
    return self.path("distill_ablations", name.replace("+", "_"))

  @property
  def results_md(self) -> str:
    return self.path("results.md")

  # ---------------- resolvers: config -> values (the config is never edited)
  def teacher_dir(self, config) -> str | None:
    """The distillation teacher's HF directory (None: random weights)."""
    t = config.teacher
    if t.source == "random":
      return None
    if t.source == "minilm":
      from mced_jax.models.teacher import default_teacher_dir  # pylint: disable=import-outside-toplevel
      return default_teacher_dir()
    if t.source == "stage3":
      return self.teacher_cls_model
    if t.source == "path":
      if not t.path:
        raise ValueError("teacher.source='path' needs --config.teacher.path=DIR")
      return fs.abspath(t.path)
    raise ValueError(f"unknown teacher.source {t.source!r}; use minilm, path, random or stage3")

  def teacher_init(self, init: str, field: str) -> str:
    """A teacher stage's starting point: 'minilm', 'mlm' (this work dir's stage-2
    output) or a local BERT directory."""
    from mced_jax.models import teacher as teacher_lib# pylint: disable=import-outside-toplevel
    if init == "minilm":
      return teacher_lib.default_teacher_dir()
    if init == "mlm":
      if not fs.exists(fs.join(self.teacher_mlm_model, "config.json")):
        raise FileNotFoundError(f"{field}='mlm' but {self.teacher_mlm_model} has no model: run "
                                "the teacher_mlm stage first (--config.stages=teacher_mlm,"
                                "teacher_cls)")
      return self.teacher_mlm_model
    try:
      return teacher_lib.check_hf_dir(fs.abspath(init), f"{field}={init!r}")
    except FileNotFoundError as e:
      raise FileNotFoundError(f"{e}; use 'minilm', 'mlm' or a local BERT directory") from e

  def pairs(self, config) -> str:
    """The prepared distillation pairs (data.path, else the data stage's output)."""
    return fs.abspath(config.data.path) if config.data.path else self.data(config.data.corpus)

  def finetune_corpus(self, config) -> str:
    """The labelled corpus: finetune.data_path, finetune.corpus (prepared into
    WORKDIR/data/<corpus> on first use), else the data stage's corpus."""
    f = config.finetune
    if f.data_path:
      return fs.abspath(f.data_path)
    return self.data(f.corpus or config.data.corpus)

  def distilled(self, config) -> str:
    return fs.abspath(config.finetune.init_dir) if config.finetune.init_dir else (
        self.distilled_student)

  # ---------------- provenance
  def save_config(self, stage_dir: str, config, **resolved) -> None:
    """The stage's config and what it resolved to, as JSON beside its outputs
    (process 0 only)."""
    import jax  # pylint: disable=import-outside-toplevel
    if jax.process_index() != 0:
      return
    fs.write_json(fs.join(stage_dir, "config.json"), {
        "saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "workdir": self.root, "processes": jax.process_count(),
        "devices": jax.device_count(), "platform": jax.default_backend(),
        "resolved": resolved, "config": _plain(config.to_dict())})


def _plain(x):
  if isinstance(x, dict):
    return {k: _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_plain(v) for v in x]
  if isinstance(x, (str, int, float, bool)) or x is None:
    return x
  return str(x)
