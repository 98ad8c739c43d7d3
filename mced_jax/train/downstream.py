"""The `finetune` stage: the paper's downstream experiments as tables.

  Table 5: Student-MCED (from scratch) vs Student+MCED (from the distilled student)
  Table 6: distillation ablations -- RL only, FL only (all pairs), RL + FL over the
           last k layer pairs -- each distilled, then fine-tuned
  Table 7: Student+MCED fine-tuned on 1/2, 1/3, 1/5 of the training data, beside
           Student-MCED on all of it

Outputs in WORKDIR/finetune: table<N>.md, table<N>_runs.csv (one row per fold x
seed), table5_ensembles.csv (with >= 2 seeds: each variant's seeds averaged into
one prediction per fold, extra rows), confusion_*.png, and WORKDIR/results.md with
every table. Each run is cached, so an interrupted stage resumes with the next
unfinished run, and runs shared by tables (e.g. Student-MCED on all data) are
trained once.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import textwrap
import time

import jax
from absl import logging

from mced_jax.evaluation import labelled
from mced_jax.evaluation import protocols
from mced_jax.evaluation import report
from mced_jax.models import export as export_lib
from mced_jax.runtime import distributed
from mced_jax.runtime import fs
from mced_jax.runtime import sharding as shd

SCRATCH, MCED = "Student−MCED", "Student+MCED"


@dataclasses.dataclass
class RunSpec:
  variant: str  # a display name, e.g. "Student+MCED"
  init_dir: str | None  # distilled student export, or None (from scratch)
  fraction: float = 1.0  # of the training utterances (Table 7)

  @property
  def key(self) -> str:
    """Directory name of the run cache: same init + fraction = same runs."""
    init = "scratch" if not self.init_dir else (
        fs.basename(fs.dirname(fs.abspath(self.init_dir))) + "-" +
        hashlib.sha1(fs.abspath(self.init_dir).encode()).hexdigest()[:8])
    return f"{init}_frac{self.fraction:.3g}"


def fingerprint(config, corpus, protocol: str) -> str:
  """Runs are cached per fine-tuning setup: a changed hyperparameter, architecture,
  corpus or protocol starts a fresh cache instead of mixing results."""
  f = config.finetune
  keys = ["epochs", "batch_size", "learning_rate", "weight_decay", "warmup_epochs", "b2",
          "crop_frames", "class_weighting", "select_metric", "normalize", "patience"]
  student = export_lib.student_dict(config.student)
  # Options added later enter the key only when used, so earlier caches stay valid.
  if student.pop("speaker_norm"):
    student["speaker_norm"] = f.speaker_group
  setup = {"finetune": {**{k: f[k] for k in keys}, "augment": f.augment.to_dict()},
           "student": student, "dtype": config.dtype,
           "corpus": fs.abspath(corpus.path), "classes": list(corpus.classes),
           "protocol": protocol, "buckets": list(labelled.frame_buckets(config))}
  return hashlib.sha1(json.dumps(setup, sort_keys=True).encode()).hexdigest()[:10]


def corpus_path(config, layout) -> str:
  """The labelled corpus's prepared dir; prepares `finetune.corpus` there (at
  finetune.data_path, or WORKDIR/data/<corpus>) on first use."""
  f = config.finetune
  path = layout.finetune_corpus(config)
  if not f.corpus or fs.exists(fs.join(path, "records.jsonl")):
    return path
  from data_pipelines import corpora  # pylint: disable=import-outside-toplevel
  from data_pipelines.stage import prepare_corpus  # pylint: disable=import-outside-toplevel
  corpus = corpora.get(f.corpus)
  if not f.root:
    raise ValueError(f"finetune.corpus={f.corpus!r} needs --config.finetune.root=<corpus dir>")
  logging.info("finetune: preparing %s from %s into %s", f.corpus, f.root, path)
  # CHOICE: labelled corpora are small and re-standardised per fold or speaker, so
  # they keep raw float32 features (no float16 rounding).
  # One frame bucket: fine-tuning reads whole utterances and buckets them itself.
  prepare_corpus(corpus, f.root, path, require_text=False, feature_dtype="float32",
                 max_tokens=config.data.max_tokens, file_format=config.data.format,
                 frame_buckets=(), max_frames=config.data.max_frames)
  return path


def _kept_export(run_json: str) -> str:
  """Where a run that some work dir exports keeps its model, beside its result."""
  return fs.join(run_json[: -len(".json")], "model")


def _copy_export(run_json: str, export_dir: str) -> None:
  """Callers know the kept model exists; process 0 copies it."""
  if jax.process_index() == 0:
    fs.copy_tree(_kept_export(run_json), export_dir)


def run_all(config, layout, corpus, folds, specs, seeds, cache_dir: str,
            export: dict | None = None) -> list[dict] | None:
  """Every (spec, fold, seed) run, reusing the ones cached in `cache_dir`.
  `export` maps a variant name to the directory its first fold/seed's model is
  exported to. Returns None when a stop signal interrupted a run (re-run to resume)."""
  from mced_jax.train import finetune as ft  # pylint: disable=import-outside-toplevel
  f = config.finetune
  mesh = shd.from_config(config.mesh)
  for b in (f.batch_size, f.eval_batch_size):
    shd.check_batch(b, mesh)
  export = export or {}
  # Every host decides from the same files: whatever process 0 wrote before (run
  # results, copied exports) has landed when they look.
  distributed.barrier("finetune_cache")
  results, todo = [], []
  for s in specs:
    for fold in folds:
      for seed in seeds:
        path = fs.join(cache_dir, s.key, fold.name, f"seed{seed}.json")
        first = fold is folds[0] and seed == seeds[0]
        exp = export.get(s.variant) if first else None
        cached = fs.exists(path)
        if cached and exp and not export_lib.exists(exp):
          # The model is kept with the cached run: copied, not retrained. (Every
          # process reaches the same answer, whoever copies first.)
          cached = export_lib.exists(_kept_export(path))
          if cached:
            _copy_export(path, exp)
        if cached:
          results.append(dict(fs.read_json(path), variant=s.variant))  # this table's name
        else:
          todo.append((s, fold, seed, exp, path))
  if results:
    logging.info("finetune: %d of %d runs already done (cached in %s)", len(results),
                 len(results) + len(todo), cache_dir)
  bar = None
  if todo and jax.process_index() == 0:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm(total=len(todo), desc="finetune runs", unit="run", dynamic_ncols=True)
  for s, fold, seed, exp, path in todo:
    t0 = time.perf_counter()
    meta = {"kind": "emotion_classifier", "student": {
        **export_lib.student_dict(config.student), "num_classes": len(corpus.classes)},
            "classes": list(corpus.classes), "frame_buckets": list(labelled.frame_buckets(config)),
            "variant": s.variant, "fold": fold.name, "seed": seed, "corpus": corpus.path}
    r = ft.train_run(config, corpus, fold, seed, s.init_dir, s.fraction, mesh,
                     path[: -len(".json")], export_dir=_kept_export(path) if exp else None,
                     export_meta=meta)
    if r is None:
      logging.warning("finetune: stopped during %s %s seed %d; re-run to resume it", s.variant,
                      fold.name, seed)
      return None
    r.update(variant=s.variant, init=s.init_dir, fraction=s.fraction,
             seconds=time.perf_counter() - t0)
    if jax.process_index() == 0:
      fs.write_json(path, r, indent=None)
      fs.rmtree(fs.join(path[: -len(".json")], "checkpoints"))
      if exp:
        _copy_export(path, exp)
    logging.info("finetune: %s %s seed %d: best epoch %d, test WA %.3f UAR %.3f WF1 %.3f "
                 "(%.0f s)", s.variant, fold.name, seed, r["best_epoch"], r["test"]["WA"],
                 r["test"]["UAR"], r["test"]["WF1"], r["seconds"])
    results.append(r)
    if bar is not None:
      bar.update(1)
      bar.set_postfix(last=f"{s.variant} {fold.name} UAR {r['test']['UAR']:.3f}", refresh=False)
  if bar is not None:
    bar.close()
  distributed.barrier("finetune_runs_written")
  return results


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


def _distill_variant(config, layout, name: str, overrides: dict) -> str:
  """Distils one Table-6 student (resumable) and returns its export dir. The full
  setting (RL + all FL pairs) is the main distillation itself."""
  d = config.distill
  merged = {k: overrides.get(k, d[k]) for k in ("rl_weight", "lambdas", "teacher_layers")}
  full = (merged["rl_weight"] != 0 and tuple(merged["lambdas"]) == tuple(d.lambdas) and
          tuple(merged["teacher_layers"]) == tuple(d.teacher_layers))
  out = layout.stage("distill") if full else layout.distill_ablation(name)
  student = fs.join(out, "student")
  if export_lib.exists(student):
    return student
  from mced_jax.train import distill  # pylint: disable=import-outside-toplevel
  cfg = copy.deepcopy(config)
  with cfg.unlocked():
    for k, v in overrides.items():
      cfg.distill[k] = v
  logging.info("table 6: distilling %s into %s", name, out)
  distill.train(cfg, layout, out)
  return student


def _table(name: str, rows, caption: str, extra: str = "", reference=None) -> str:
  return (f"## {name}\n\n{caption}\n\n" + report.markdown_table(rows, reference=reference) +
          ("\n\n" + extra if extra else "") + "\n")


def run(config, layout) -> dict | None:
  f = config.finetune
  out = layout.stage("finetune")
  classes = tuple(f.classes)
  if not classes and not (f.data_path or f.corpus):
    from data_pipelines import corpora  # pylint: disable=import-outside-toplevel
    classes = tuple(corpora.get(config.data.corpus).classes or ())
  corpus = labelled.load_corpus(corpus_path(config, layout), classes)
  folds = protocols.make_folds(corpus.records, f.protocol, f.num_folds)
  if f.max_folds > 0:
    folds = folds[: f.max_folds]
  # Runs are keyed by setup (fingerprint) and init (RunSpec.key), so work dirs may
  # share one cache (finetune.cache_dir): Student-MCED runs then train once.
  cache = fs.join(fs.abspath(f.cache_dir) if f.cache_dir else fs.join(out, "runs"),
                  fingerprint(config, corpus, f.protocol))
  distilled = layout.distilled(config)
  tables = [t.strip() for t in str(f.tables).split(",") if t.strip()]
  bad = [t for t in tables if t not in ("5", "6", "7")]
  if bad:
    raise ValueError(f"finetune.tables: unknown table(s) {bad}; known: 5, 6, 7")
  layout.save_config(out, config, corpus=corpus.path, distilled=distilled, cache=cache)
  ref = dict(f.reference) if f.reference.get("name") else None
  setup = (f"Corpus `{corpus.path}` ({len(corpus.records)} utterances, classes "
           f"{', '.join(corpus.classes)}); protocol `{f.protocol}` with {len(folds)} fold(s), "
           f"model selection on validation {f.select_metric}; test metrics mean ± std over "
           "folds x seeds.")
  sections, summary = [f"# Downstream results\n\n{setup}\n"], {}
  for t in tables:
    if t == "5":
      specs = [RunSpec(SCRATCH, None), RunSpec(MCED, distilled)]
      seeds = tuple(f.seeds)
      export = {SCRATCH: fs.join(out, "model_scratch"), MCED: fs.join(out, "model_mced")
                } if f.get("export_models", True) else None
      caption = "Table 5 analogue: the student from scratch vs distilled with MCED."
    elif t == "6":
      specs = [RunSpec(name, _distill_variant(config, layout, name, ov))
               for name, ov in distill_ablations(config.distill).items()]
      seeds, export = tuple(f.ablation_seeds), None
      caption = ("Table 6 analogue: response-level (RL) and feature-level (FL) distillation; "
                 "FL-k = the last k layer pairs.")
    else:
      specs = [RunSpec(f"{MCED} 1/{round(1 / fr)}", distilled, fr)
               for fr in f.fractions] + [RunSpec(f"{SCRATCH} full", None, 1.0)]
      seeds, export = tuple(f.ablation_seeds), None
      caption = "Table 7 analogue: fine-tuning on a class-stratified fraction of the training data."
    results = run_all(config, layout, corpus, folds, specs, seeds, cache, export)
    if results is None:
      return None
    order = [s.variant for s in specs]
    ens = []
    if t == "5" and f.get("seed_ensemble", True):  # configs saved before it lack the key
      ens = report.seed_ensembles(results, order)
    order += list(dict.fromkeys(r["variant"] for r in ens))
    shown = results + ens
    rows = report.summarize(shown, order)
    extra = "Test UAR per fold (mean over seeds):\n\n" + report.per_fold_table(shown, order)
    if ens:
      extra += ("\n\nSeed ensembles (extra rows, not the paper's protocol): per fold, the "
                "seeds' test probabilities averaged into one prediction; ± is over folds. "
                "Per fold: `finetune/table5_ensembles.csv`.")
    if t == "5":
      extra += "\n\nConfusion matrices (summed over runs): " + ", ".join(
          f"`finetune/{n}`" for n in report.confusion_names(shown, "table5_"))
    extra += f"\n\nPlot: `finetune/table{t}.png`"
    text = _table(f"Table {t}", rows, caption, extra, ref if t == "5" else None)
    if jax.process_index() == 0:  # one writer for reports
      report.write_runs_csv(results, fs.join(out, f"table{t}_runs.csv"))
      if ens:
        report.write_runs_csv(ens, fs.join(out, "table5_ensembles.csv"))
      if t == "5":
        report.confusion_plots(shown, corpus.classes, out, "table5_")
      report.bar_plot(rows, fs.join(out, f"table{t}.png"), textwrap.fill(caption, 70),
                      ref if t == "5" else None)
      fs.write_text(fs.join(out, f"table{t}.md"), text)
    sections.append(text)
    summary[f"table{t}"] = rows
  # results.md collects every table this work dir has, also those of earlier runs
  # (e.g. Table 5 from the main job, Tables 6-7 from the ablation job).
  for t in ("5", "6", "7"):
    path = fs.join(out, f"table{t}.md")
    if t not in tables and fs.exists(path):
      sections.append(fs.read_text(path))
  sections = sections[:1] + sorted(sections[1:])
  md = "\n".join(sections)
  if jax.process_index() == 0:
    fs.write_text(layout.results_md, md)
    print("\n" + md)
  logging.info("finetune: wrote %s", layout.results_md)
  return summary
