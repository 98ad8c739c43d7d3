"""Corpus -> IS16 features -> WordPiece ids -> TFDS ArrayRecord shards, with a report.

    python -m data_pipelines.prepare --corpus=ravdess \
        --root=../shared/data/audio/ravdess_5class --out=data/ravdess

Layout of `--out` (read back by data_pipelines/dataset.py, the one reader):
  features/            one raw .npy per utterance (extraction cache; a re-run skips
                       what exists)
  tfds/mced_pairs/<name>/1.0.0/   ArrayRecord shards + dataset_info.json, written by
                       a TFDS builder in records.jsonl order (random access)
  feature_stats.json   per-dimension mean/std over the train split (for normalising)
  records.jsonl        the kept utterances (id, split, label, speaker, session, ...)
  report.json          counts, skipped items with their reasons, real-time factor

Bad items (unreadable, empty, silent, too short or non-finite audio; empty or
undecodable text; pairs failing the filter) are skipped, counted and listed with
their path and reason; the rest is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

import numpy as np

from data_pipelines import features as feat_lib
from data_pipelines.records import Utterance, by_split, speaker_key
from data_pipelines.standardize import frame_stats
from data_pipelines.tokenize import WordPiece, clean_text, word_count


@dataclasses.dataclass
class PrepareOptions:
  name: str
  label_names: tuple = ()  # () for unlabelled pairs
  feature_dtype: str = "float16"  # halves storage; features are standardised later
  max_tokens: int = 64
  vocab: str | None = None
  require_text: bool = True
  min_audio_seconds: float = 0.5  # below this openSMILE gives too few frames to use
  # Pair filter of the paper's EmoATMovie (3.1.2): drop < 1.5 s or one-word pairs.
  filter_pairs: bool = False
  manual_dir: str | None = None  # licensed corpora (IEMOCAP, MELD): where the user put it
  min_pair_seconds: float = 1.5
  min_pair_words: int = 2
  # Long-utterance rule: pairs longer than this are dropped (0 = keep all; the
  # reader then truncates audio beyond data.max_frames and counts it). Dropping,
  # not cutting: a cut clip keeps the whole transcript, so the teacher would
  # describe words the student never hears.
  max_pair_seconds: float = 0.0
  # "global": standardise with the train split's statistics; "speaker": each
  # speaker with the statistics of all its own utterances (no labels, no other
  # speaker's data); an utterance without a speaker is its own speaker.
  normalize: str = "global"
  num_workers: int = 0  # 0: all cores
  progress: bool = True


def feature_stats(paths) -> tuple[np.ndarray, np.ndarray, int]:
  """Frame-weighted per-dimension (mean, std, frames) over raw .npy features."""
  return frame_stats(np.load(p) for p in paths)


def _fail(skipped, r, reason):
  skipped[r.utt_id] = f"{r.audio_path}: {reason}" if r.audio_path not in reason else reason


def _signature(records, opts) -> dict:
  """What a prepared directory was built from: the options that shape it and a
  hash of the input records (before any cleaning; without audio paths, so a moved
  corpus still matches)."""
  shaping = {k: v for k, v in dataclasses.asdict(opts).items()
             if k not in ("num_workers", "progress", "manual_dir")}
  rows = json.dumps([{k: v for k, v in dataclasses.asdict(r).items() if k != "audio_path"}
                     for r in records], sort_keys=True, default=str)
  return {"options": json.loads(json.dumps(shaping, default=str)),
          "inputs": hashlib.sha1(rows.encode()).hexdigest(), "input_items": len(records)}


def _prepared(out_dir: str, signature: dict) -> dict | None:
  """The stored report when `out_dir` was prepared from the same signature; None
  when there is nothing there (or an older report without one: rebuilt in place,
  the shards checked against the records); an error when it differs."""
  path = os.path.join(out_dir, "report.json")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    report = json.load(f)
  old = report.get("signature")
  if old is None or not os.path.isdir(report.get("tfds_dir", "")):
    return None
  if old == signature:
    return report
  diff = sorted(k for k in set(old["options"]) | set(signature["options"])
                if old["options"].get(k) != signature["options"].get(k))
  what = [f"options {diff}"] if diff else []
  if old["inputs"] != signature["inputs"]:
    what.append(f"inputs ({old['input_items']} -> {signature['input_items']} items, or "
                "their content)")
  raise ValueError(f"{out_dir} was prepared from other {' and '.join(what)}; delete it to "
                   "rebuild, or prepare into another directory")


def prepare(records: list[Utterance], out_dir: str, opts: PrepareOptions) -> dict:
  """Runs the whole preparation; returns the report dict (also written to disk)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from data_pipelines.builders.pairs import MCEDPairs, PairsConfig  # pylint: disable=import-outside-toplevel

  t_start = time.perf_counter()
  if not opts.progress:
    tfds.disable_progress_bar()
  os.makedirs(out_dir, exist_ok=True)
  if not records:
    raise ValueError(f"{opts.name}: no utterances to prepare")
  signature = _signature(records, opts)
  done = _prepared(out_dir, signature)
  if done is not None:
    print(f"[{opts.name}] already prepared at {out_dir} from the same inputs and options "
          f"({done['written']} utterances); delete it to rebuild")
    return done
  skipped: dict[str, str] = {}
  # 1. Text: repair, tokenise; empty text is a bad item when text is required.
  tok = WordPiece(opts.vocab, max_tokens=opts.max_tokens)
  tokens, kept, truncated = {}, [], 0
  for r in records:
    try:
      r.text = clean_text(r.text)
    except Exception as e:  # noqa: BLE001
      _fail(skipped, r, f"undecodable transcript ({e})")
      continue
    if opts.require_text and not r.text:
      _fail(skipped, r, "empty transcript")
      continue
    if opts.label_names and r.label not in opts.label_names:
      _fail(skipped, r, f"label {r.label!r} not in {list(opts.label_names)}")
      continue
    ids, cut = tok.encode(r.text)
    truncated += int(cut)
    tokens[r.utt_id] = ids
    kept.append(r)
  # 2. Audio features (parallel, cached, bad files skipped).
  cache = os.path.join(out_dir, "features")
  rep = feat_lib.extract_many([(r.utt_id, r.audio_path) for r in kept], cache,
                              opts.num_workers, opts.min_audio_seconds, opts.progress)
  skipped.update(rep.skipped)
  # 3. Pair filter on duration and word count.
  final = []
  for r in kept:
    info = rep.ok.get(r.utt_id)
    if info is None:
      continue
    if opts.filter_pairs and info["seconds"] < opts.min_pair_seconds:
      _fail(skipped, r, f"pair filter: {info['seconds']:.2f} s < {opts.min_pair_seconds} s")
    elif opts.filter_pairs and word_count(r.text) < opts.min_pair_words:
      _fail(skipped, r, f"pair filter: fewer than {opts.min_pair_words} words")
    elif (opts.filter_pairs and opts.max_pair_seconds > 0
          and info["seconds"] > opts.max_pair_seconds):
      _fail(skipped, r, f"long-utterance rule: {info['seconds']:.2f} s > "
                        f"{opts.max_pair_seconds} s")
    else:
      final.append(r)
  if not final:
    raise ValueError(f"{opts.name}: every utterance was skipped; first reasons: "
                     f"{list(skipped.values())[:5]}")
  splits = by_split(final)
  # 4. Per-dimension statistics on the train split (all data if there is none),
  #    and per speaker when asked.
  if opts.normalize not in ("global", "speaker"):
    raise ValueError(f"normalize must be 'global' or 'speaker', got {opts.normalize!r}")
  mean, std, n = feature_stats([feat_lib.feature_path(cache, r.utt_id)
                                for r in splits.get("train", final)])
  speakers = {}
  if opts.normalize == "speaker":
    groups = {}
    for r in final:
      groups.setdefault(speaker_key(r.speaker, r.utt_id), []).append(r.utt_id)
    for key, ids in groups.items():
      m, s, _ = feature_stats([feat_lib.feature_path(cache, u) for u in ids])
      speakers[key] = {"mean": m.tolist(), "std": s.tolist()}
  # Raw IS16 values reach ~1e7 (spectral variance), beyond float16's 65504, so
  # float16 storage holds *standardised* features; float32 storage keeps raw ones.
  stored = "normalized" if opts.feature_dtype == "float16" else "raw"
  with open(os.path.join(out_dir, "feature_stats.json"), "w", encoding="utf-8") as f:
    json.dump({"mean": mean.tolist(), "std": std.tolist(), "frames": int(n),
               "split": "train" if "train" in splits else "all", "stored": stored,
               "normalize": opts.normalize, "speakers": speakers}, f)
  if speakers:
    by_id = {r.utt_id: speakers[speaker_key(r.speaker, r.utt_id)] for r in final}
    norm = lambda u: (np.asarray(by_id[u]["mean"]), np.asarray(by_id[u]["std"]))
  else:
    norm = lambda u: (mean, std)
  # 5. TFRecords through the TFDS builder (skipped when already prepared).
  cfg = PairsConfig(name=opts.name, label_names=tuple(opts.label_names),
                    feature_dtype=opts.feature_dtype, manual=bool(opts.manual_dir),
                    description=f"MCED utterances of corpus {opts.name}")
  builder = MCEDPairs(records_by_split=splits, cache_dir=cache, tokens_by_id=tokens,
                      normalize=norm if stored == "normalized" else None,
                      data_dir=os.path.join(out_dir, "tfds"), config=cfg,
                      file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False,
                                                   manual_dir=opts.manual_dir))
  # The builder skips existing shards; they must hold exactly these records.
  for split, recs in splits.items():
    have = builder.info.splits[split].num_examples
    if have != len(recs):
      raise IOError(f"{builder.data_dir}: its {split} shards hold {have} utterances but the "
                    f"inputs now give {len(recs)}; delete {out_dir} and prepare again")
  with open(os.path.join(out_dir, "records.jsonl"), "w", encoding="utf-8") as f:
    for r in final:
      d = dataclasses.asdict(r)
      d["frames"] = rep.ok[r.utt_id]["frames"]
      d["num_tokens"] = int(len(tokens[r.utt_id]))
      f.write(json.dumps(d) + "\n")
  report = {
      "name": opts.name, "input_items": len(records), "written": len(final),
      "skipped": len(skipped), "skipped_items": skipped,
      "splits": {k: len(v) for k, v in splits.items()},
      "labels": ({k: sum(r.label == k for r in final) for k in opts.label_names}
                 if opts.label_names else None),
      "transcripts_truncated": truncated,
      "dropped_long": sum("long-utterance rule" in v for v in skipped.values()),
      "normalize": opts.normalize,
      "audio_seconds_extracted": rep.audio_seconds,
      "extraction_wall_seconds": rep.wall_seconds,
      "extraction_workers": rep.workers,
      "rtf_per_core": rep.rtf_per_core if rep.workers else None,
      "tfds_dir": builder.data_dir, "total_seconds": time.perf_counter() - t_start,
      "signature": signature,
  }
  with open(os.path.join(out_dir, "report.json"), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=1)
  print(f"[{opts.name}] {rep.summary()}")
  print(f"[{opts.name}] wrote {len(final)} utterances {report['splits']} to {builder.data_dir}; "
        f"skipped {len(skipped)}")
  for utt, why in list(skipped.items())[:20]:
    print(f"  skipped {utt}: {why}")
  if len(skipped) > 20:
    print(f"  ... and {len(skipped) - 20} more (see report.json)")
  return report


def _flags():
  from absl import flags  # pylint: disable=import-outside-toplevel
  from data_pipelines.corpora import CORPORA  # pylint: disable=import-outside-toplevel
  fv = flags.FlagValues()
  flags.DEFINE_enum("corpus", None, sorted(CORPORA), "corpus (data_pipelines/corpora.py)",
                    flag_values=fv)
  flags.DEFINE_string("root", None, "corpus directory (or manifest file)", flag_values=fv)
  flags.DEFINE_string("out", None, "output directory", flag_values=fv)
  flags.DEFINE_string("name", None, "dataset name (default: the corpus)", flag_values=fv)
  flags.DEFINE_string("labels", None, "comma-separated class names (manifest); empty = "
                      "unlabelled", flag_values=fv)
  flags.DEFINE_enum("feature_dtype", "float16", ["float16", "float32"],
                    "float16: standardised features (half the I/O); float32: raw",
                    flag_values=fv)
  flags.DEFINE_integer("max_tokens", 64, "WordPiece truncation", flag_values=fv)
  flags.DEFINE_string("vocab", None, "vocab.txt or teacher dir", flag_values=fv)
  flags.DEFINE_integer("workers", 0, "extraction processes (0: all cores)", flag_values=fv)
  flags.DEFINE_enum("filter_pairs", None, ["true", "false"], "the paper's pair filter "
                    "(default: on for pair corpora)", flag_values=fv)
  return fv


def main(argv) -> dict:
  """argv: [program, --corpus=NAME, --root=DIR, --out=DIR, ...] (absl flag syntax)."""
  from data_pipelines import corpora  # pylint: disable=import-outside-toplevel
  from mced_jax.runtime import cli# pylint: disable=import-outside-toplevel
  f = _flags()
  usage = ("usage: python -m data_pipelines.prepare --corpus=NAME --root=DIR --out=DIR "
           "[--labels=a,b] [--feature_dtype=float32] ...")
  rest = cli.parse(f, argv, usage, __doc__)
  if rest or not (f.corpus and f.root and f.out):
    raise ValueError(usage)
  corpus = corpora.get(f.corpus)
  labels = corpus.classes if not corpus.pairs else ()
  if f.labels is not None:
    labels = tuple(x for x in f.labels.split(",") if x)
  filt = corpus.pairs if f.filter_pairs is None else f.filter_pairs == "true"
  opts = PrepareOptions(name=f.name or f.corpus, label_names=tuple(labels or ()),
                        feature_dtype=f.feature_dtype, max_tokens=f.max_tokens,
                        vocab=f.vocab, num_workers=f.workers, filter_pairs=filt,
                        manual_dir=f.root if corpus.licensed else None)
  return prepare(corpus.read(f.root), f.out, opts)


if __name__ == "__main__":
  import sys  # pylint: disable=ungrouped-imports
  main(sys.argv)
