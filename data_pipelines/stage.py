"""The `data` stage of `python -m mced_jax.main`: prepare the corpus in config.data.

config.data.corpus = "demo" generates the espeak-ng demo corpus first; any other
corpus of the registry (data_pipelines/corpora.py) reads config.data.root. The
prepared dataset goes to the layout's pairs path (data.path, default
WORKDIR/data/<corpus>), which distillation then reads. Finished work is skipped.
"""

from __future__ import annotations

from absl import logging

from data_pipelines import corpora, demo
from data_pipelines.prepare import PrepareOptions, prepare
from mced_jax.runtime import fs


def prepare_corpus(corpus: corpora.Corpus, root: str, out: str, *, name: str | None = None,
                   extra=(), **options) -> dict:
  """Reads a registered corpus (+ extra pair corpora) and prepares it into `out`."""
  records = corpus.read(root)
  for extra_corpus, extra_root in extra:
    more = extra_corpus.read(extra_root)
    logging.info("data: + %d utterances of %s from %s", len(more), extra_corpus.name,
                 extra_root)
    records += more
  opts = PrepareOptions(name=name or corpus.name,
                        label_names=() if corpus.pairs else tuple(corpus.classes or ()),
                        filter_pairs=corpus.pairs,
                        manual_dir=root if corpus.licensed else None, **options)
  return prepare(records, out, opts)


def run(config, layout) -> dict:
  d = config.data
  if d.corpus != "demo":
    return _prepare(config, layout, d.root)
  prosody = d.demo_prosody
  where = layout.demo_corpus_for(prosody)
  if not fs.is_url(where):
    return _prepare(config, layout, demo.generate(where, d.demo_per_class_per_voice,
                                                  seed=config.seed, prosody=prosody))
  # A URL work dir: the wavs are an input, spoken into a temporary local directory
  # and gone after preparation; the manifest goes to the work dir (the teacher's
  # fallback text reads it).
  import tempfile  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory(prefix="mced_demo_") as tmp:
    manifest = demo.generate(tmp, d.demo_per_class_per_voice, seed=config.seed, prosody=prosody)
    with open(manifest, encoding="utf-8") as f:
      fs.write_text(fs.join(where, "manifest.csv"), f.read())
    return _prepare(config, layout, manifest)


def _prepare(config, layout, root: str) -> dict:
  d = config.data
  corpus = corpora.get(d.corpus)
  if not root:
    raise ValueError(f"data.corpus={d.corpus!r} needs --config.data.root=<corpus dir>")
  return prepare_corpus(corpus, root, layout.pairs(config),
                        extra=corpora.parse_extra(d.extra_corpora), max_tokens=d.max_tokens,
                        min_pair_seconds=d.min_pair_seconds, min_pair_words=d.min_pair_words,
                        max_pair_seconds=d.max_pair_seconds, normalize=d.normalize,
                        feature_dtype=d.feature_dtype, file_format=d.format,
                        num_shards=d.num_shards, frame_buckets=tuple(d.frame_buckets),
                        max_frames=d.max_frames, engine=d.engine, beam_options=d.beam_options)
