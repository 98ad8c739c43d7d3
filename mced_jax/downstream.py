"""The `finetune` stage: the paper's downstream experiments as tables.

  Table 5: Student-MCED (from scratch) vs Student+MCED (from the distilled student)
  Table 6: distillation ablations -- RL only, FL only (all pairs), RL + FL over the
           last k layer pairs -- each distilled, then fine-tuned
  Table 7: Student+MCED fine-tuned on 1/2, 1/3, 1/5 of the training data, beside
           Student-MCED on all of it

Outputs in WORKDIR/finetune: table<N>.md, table<N>_runs.csv (one row per fold x
seed), confusion_*.png, and WORKDIR/results.md with every table. Each run is cached,
so an interrupted stage resumes with the next unfinished run, and runs shared by
tables (e.g. Student-MCED on all data) are trained once.
"""

from __future__ import annotations

import copy
import os
import textwrap

from absl import logging

from mced_jax import protocols
from mced_jax import report
from mced_jax.train import finetune as ft

SCRATCH, MCED = "Student−MCED", "Student+MCED"


def corpus_path(config, workdir: str) -> str:
  """The labelled corpus's prepared dir; prepares `finetune.corpus` on first use."""
  f = config.finetune
  if f.data_path:
    return os.path.abspath(f.data_path)
  if not f.corpus:
    return os.path.join(workdir, "data", config.data.corpus)
  path = os.path.join(workdir, "data", f.corpus)
  if not os.path.exists(os.path.join(path, "records.jsonl")):
    from data_pipelines.adapters import ADAPTERS  # pylint: disable=import-outside-toplevel
    from data_pipelines.prepare import CORPORA, PrepareOptions, prepare  # pylint: disable=import-outside-toplevel
    if f.corpus not in ADAPTERS or not f.root:
      raise ValueError(f"finetune.corpus={f.corpus!r} needs an adapter of "
                       f"{', '.join(ADAPTERS)} and --config.finetune.root=<corpus dir>")
    labels, _ = CORPORA[f.corpus]
    logging.info("finetune: preparing %s from %s into %s", f.corpus, f.root, path)
    prepare(ADAPTERS[f.corpus](f.root), path,
            PrepareOptions(name=f.corpus, label_names=tuple(labels or ()),
                           require_text=False, max_tokens=config.data.max_tokens,
                           manual_dir=f.root if f.corpus in ("iemocap", "meld") else None))
  return path


def distill_ablations(distill_cfg) -> dict:
  """Table 6 settings as overrides of config.distill (name -> fields)."""
  tl, sl, lam = (tuple(distill_cfg.teacher_layers), tuple(distill_cfg.student_layers),
                 tuple(distill_cfg.lambdas))
  n = len(lam)
  out = {"RL": {"lambdas": (0.0,) * n}, f"FL-{n}layers": {"rl_weight": 0.0}}
  for k in range(1, n + 1):
    out[f"RL+FL-{k}layer{'s' if k > 1 else ''}"] = {
        "teacher_layers": tl[-k:], "student_layers": sl[-k:], "lambdas": lam[-k:]}
  return out


def _distill_variant(config, workdir: str, name: str, overrides: dict) -> str:
  """Distils one Table-6 student (resumable) and returns its export dir. The full
  setting (RL + all FL pairs) is the main distillation itself."""
  d = config.distill
  merged = {k: overrides.get(k, d[k]) for k in ("rl_weight", "lambdas", "teacher_layers")}
  full = (merged["rl_weight"] != 0 and tuple(merged["lambdas"]) == tuple(d.lambdas) and
          tuple(merged["teacher_layers"]) == tuple(d.teacher_layers))
  out = (os.path.join(workdir, "distill") if full else
         os.path.join(workdir, "distill_ablations", name.replace("+", "_")))
  student = os.path.join(out, "student")
  from mced_jax import export as export_lib  # pylint: disable=import-outside-toplevel
  if export_lib.exists(student):
    return student
  from mced_jax.train import distill  # pylint: disable=import-outside-toplevel
  cfg = copy.deepcopy(config)
  with cfg.unlocked():
    for k, v in overrides.items():
      cfg.distill[k] = v
  distill.resolve_inputs(cfg, workdir)
  logging.info("table 6: distilling %s into %s", name, out)
  distill.train(cfg, out)
  return student


def _table(name: str, rows, caption: str, extra: str = "", reference=None) -> str:
  return (f"## {name}\n\n{caption}\n\n" + report.markdown_table(rows, reference=reference) +
          ("\n\n" + extra if extra else "") + "\n")


def run(config, workdir: str) -> dict:
  f = config.finetune
  out = os.path.join(workdir, "finetune")
  os.makedirs(out, exist_ok=True)
  classes = tuple(f.classes)
  if not classes and config.data.corpus == "demo" and not (f.data_path or f.corpus):
    from data_pipelines.demo import CLASSES  # pylint: disable=import-outside-toplevel
    classes = CLASSES
  corpus = ft.load_corpus(corpus_path(config, workdir), classes)
  folds = protocols.make_folds(corpus.records, f.protocol, f.num_folds)
  if f.max_folds > 0:
    folds = folds[: f.max_folds]
  cache = os.path.join(out, "runs", ft.fingerprint(config, corpus, f.protocol))
  distilled = os.path.abspath(f.init_dir) if f.init_dir else os.path.join(
      workdir, "distill", "student")
  tables = [t.strip() for t in str(f.tables).split(",") if t.strip()]
  bad = [t for t in tables if t not in ("5", "6", "7")]
  if bad:
    raise ValueError(f"finetune.tables: unknown table(s) {bad}; known: 5, 6, 7")
  ref = dict(f.reference) if f.reference.get("name") else None
  setup = (f"Corpus `{corpus.path}` ({len(corpus.records)} utterances, classes "
           f"{', '.join(corpus.classes)}); protocol `{f.protocol}` with {len(folds)} fold(s), "
           f"model selection on validation {f.select_metric}; test metrics mean ± std over "
           "folds x seeds.")
  sections, summary = [f"# Downstream results\n\n{setup}\n"], {}
  for t in tables:
    if t == "5":
      specs = [ft.RunSpec(SCRATCH, None), ft.RunSpec(MCED, distilled)]
      seeds = tuple(f.seeds)
      export = {SCRATCH: os.path.join(out, "model_scratch"),
                MCED: os.path.join(out, "model_mced")}
      caption = "Table 5 analogue: the student from scratch vs distilled with MCED."
    elif t == "6":
      specs = [ft.RunSpec(name, _distill_variant(config, workdir, name, ov))
               for name, ov in distill_ablations(config.distill).items()]
      seeds, export = tuple(f.ablation_seeds), None
      caption = ("Table 6 analogue: response-level (RL) and feature-level (FL) distillation; "
                 "FL-k = the last k layer pairs.")
    else:
      specs = [ft.RunSpec(f"{MCED} 1/{round(1 / fr)}", distilled, fr)
               for fr in f.fractions] + [ft.RunSpec(f"{SCRATCH} full", None, 1.0)]
      seeds, export = tuple(f.ablation_seeds), None
      caption = "Table 7 analogue: fine-tuning on a class-stratified fraction of the training data."
    results = ft.run_all(config, corpus, folds, specs, seeds, cache, export)
    order = [s.variant for s in specs]
    rows = report.summarize(results, order)
    report.write_runs_csv(results, os.path.join(out, f"table{t}_runs.csv"))
    extra = "Test UAR per fold (mean over seeds):\n\n" + report.per_fold_table(results, order)
    if t == "5":
      pngs = report.confusion_plots(results, corpus.classes, out, "table5_")
      extra += "\n\nConfusion matrices (summed over runs): " + ", ".join(
          f"`finetune/{os.path.basename(p)}`" for p in pngs)
    report.bar_plot(rows, os.path.join(out, f"table{t}.png"), textwrap.fill(caption, 70),
                    ref if t == "5" else None)
    extra += f"\n\nPlot: `finetune/table{t}.png`"
    text = _table(f"Table {t}", rows, caption, extra, ref if t == "5" else None)
    with open(os.path.join(out, f"table{t}.md"), "w", encoding="utf-8") as fh:
      fh.write(text)
    sections.append(text)
    summary[f"table{t}"] = rows
  # results.md collects every table this work dir has, also those of earlier runs
  # (e.g. Table 5 from the main job, Tables 6-7 from the ablation job).
  for t in ("5", "6", "7"):
    path = os.path.join(out, f"table{t}.md")
    if t not in tables and os.path.exists(path):
      with open(path, encoding="utf-8") as fh:
        sections.append(fh.read())
  sections = sections[:1] + sorted(sections[1:])
  md = "\n".join(sections)
  with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as fh:
    fh.write(md)
  print("\n" + md)
  logging.info("finetune: wrote %s", os.path.join(workdir, "results.md"))
  return summary
