"""The `data` stage of `python -m mced_jax.main`: prepare the corpus in config.data.

config.data.corpus = "demo" generates the espeak-ng demo corpus first; any other
adapter name (manifest, ljspeech, ravdess, iemocap, meld) reads config.data.root.
The prepared dataset goes to config.data.path (default WORKDIR/data/<corpus>), which
the distillation stage then reads. Finished work is skipped on re-runs.
"""

from __future__ import annotations

import os

from absl import logging

from data_pipelines import demo
from data_pipelines.adapters import ADAPTERS
from data_pipelines.prepare import CORPORA, PrepareOptions, prepare


def resolve_path(config, workdir: str) -> str:
  d = config.data
  return os.path.abspath(d.path) if d.path else os.path.join(workdir, "data", d.corpus)


def run(config, workdir: str) -> dict:
  d = config.data
  out = resolve_path(config, workdir)
  if d.corpus == "demo":
    manifest = demo.generate(os.path.join(workdir, "data", "demo_corpus"),
                             d.demo_per_class_per_voice, seed=config.seed)
    records = ADAPTERS["manifest"](manifest)
    labels, filt = (), True  # used as unlabelled pairs for distillation
  else:
    if d.corpus not in ADAPTERS:
      raise ValueError(f"unknown data.corpus {d.corpus!r}; known: demo, {', '.join(ADAPTERS)}")
    if not d.root:
      raise ValueError(f"data.corpus={d.corpus!r} needs --config.data.root=<corpus dir>")
    records = ADAPTERS[d.corpus](d.root)
    labels, filt = CORPORA[d.corpus]
    labels = labels or ()
  for item in (x.strip() for x in d.extra_corpora.split(",") if x.strip()):
    name, _, root = item.partition(":")
    if name not in ADAPTERS or not root:
      raise ValueError(f"data.extra_corpora entry {item!r}: expected adapter:root with an "
                       f"adapter of {', '.join(ADAPTERS)}")
    extra = ADAPTERS[name](root)
    logging.info("data: + %d utterances of %s from %s", len(extra), name, root)
    records += extra
  if os.path.exists(os.path.join(out, "report.json")):
    logging.info("data: %s already prepared at %s (delete it to rebuild)", d.corpus, out)
  opts = PrepareOptions(name=d.corpus, label_names=tuple(labels), max_tokens=d.max_tokens,
                        filter_pairs=filt, min_pair_seconds=d.min_pair_seconds,
                        min_pair_words=d.min_pair_words, feature_dtype=d.feature_dtype,
                        manual_dir=d.root if d.corpus in ("iemocap", "meld") else None)
  return prepare(records, out, opts)
