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

from data_pipelines import buckets as buckets_lib
from data_pipelines import features as feat_lib
from data_pipelines import files
from data_pipelines import index as index_lib
from data_pipelines import tf_compat
from data_pipelines.records import Utterance, by_split, speaker_key
from data_pipelines import standardize
from data_pipelines.beam_prepare import pair_filter_reason
from data_pipelines.tokenize import WordPiece, clean_text, word_count
from mced_jax.runtime import fs

FORMATS = ("array_record", "tfrecord")


@dataclasses.dataclass
class PrepareOptions:
  name: str
  label_names: tuple = ()  # () for unlabelled pairs
  feature_dtype: str = "float16"  # halves storage; features are standardised later
  tensor_encoding: str = "bytes"  # arrays as raw bytes (builders/pairs.py: features_dict)
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
  # Shards: "array_record" (random access; local disks) or "tfrecord" (streamed by
  # tf.data, from local disks or gs://); "auto": tfrecord for a URL output.
  file_format: str = "auto"
  # Shards per (split, frame bucket) part: the *slots* of the batch plan
  # (data_pipelines/batch_plan.py). A global batch is slots x rows per slot, and a
  # multi-host job reads best with a multiple of its host count.
  num_shards: int = 8
  # Physical frame buckets (the last is max_frames; longer clips go there and the
  # reader truncates them). Fixed at preparation: the plan pads to them.
  frame_buckets: tuple = (250, 500, 1000)
  max_frames: int = 1000
  order_seed: int = 0  # the seeded order of examples within a part
  # "pool": a process pool on this machine; "beam": an Apache Beam pipeline (all
  # local cores, or a cluster through beam_options, e.g. "--runner=DataflowRunner,...").
  engine: str = "pool"
  beam_options: str = ""
  cache_dir: str = ""  # the feature cache ("": <out>/features, or a URL's staging)
  num_workers: int = 0  # 0: all cores
  progress: bool = True


def _fail(skipped, r, reason):
  skipped[r.utt_id] = f"{r.audio_path}: {reason}" if r.audio_path not in reason else reason


def _signature(records, opts) -> dict:
  """What a prepared directory was built from: the options that shape it and a
  hash of the input records (before any cleaning; without audio paths, so a moved
  corpus still matches)."""
  shaping = {k: v for k, v in dataclasses.asdict(opts).items()
             if k not in ("num_workers", "progress", "manual_dir", "engine", "beam_options",
                          "cache_dir")}
  shaping["frame_buckets"] = list(shaping["frame_buckets"])
  rows = json.dumps([{k: v for k, v in dataclasses.asdict(r).items() if k != "audio_path"}
                     for r in records], sort_keys=True, default=str)
  return {"options": json.loads(json.dumps(shaping, default=str)),
          "inputs": hashlib.sha1(rows.encode()).hexdigest(), "input_items": len(records)}


def _prepared(out_dir: str, signature: dict) -> dict | None:
  """The stored report when `out_dir` was prepared from the same signature; None
  when there is nothing there; an error when it differs."""
  path = fs.join(out_dir, "report.json")
  if not files.exists(path):
    return None
  report = files.read_json(path)
  old = report.get("signature")
  if old is None or not files.exists(fs.join(out_dir, index_lib.FILE)):
    if fs.is_url(out_dir):
      raise ValueError(f"{out_dir} holds an incomplete or older prepared dataset; delete it")
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


def resolve_format(file_format: str, out_dir: str) -> str:
  """'auto': TFRecord for a URL output (tf.data streams it from there; the
  ArrayRecord reader cannot open URLs), ArrayRecord on a local disk."""
  if file_format == "auto":
    return "tfrecord" if fs.is_url(out_dir) else "array_record"
  if file_format not in FORMATS:
    raise ValueError(f"file format {file_format!r}; known: auto, {', '.join(FORMATS)}")
  return file_format


def prepare(records: list[Utterance], out_dir: str, opts: PrepareOptions) -> dict:
  """Runs the whole preparation; returns the report dict (also written to disk).
  A URL `out_dir` is built in a local staging directory and uploaded (without the
  feature cache), so nothing is left on the local disk."""
  if not records:
    raise ValueError(f"{opts.name}: no utterances to prepare")
  opts = dataclasses.replace(opts, file_format=resolve_format(opts.file_format, out_dir))
  signature = _signature(records, opts)
  done = _prepared(out_dir, signature)
  if done is not None:
    print(f"[{opts.name}] already prepared at {out_dir} from the same inputs and options "
          f"({done['written']} utterances); delete it to rebuild")
    return done
  if not fs.is_url(out_dir):
    return _prepare_into(records, out_dir, opts, signature, out_dir)
  import tempfile  # pylint: disable=import-outside-toplevel
  if opts.engine == "beam" and not opts.cache_dir:
    # Beam workers write the feature cache beside the output, so a re-run resumes.
    opts = dataclasses.replace(opts, cache_dir=fs.join(out_dir, "features"))
  with tempfile.TemporaryDirectory(prefix="mced_prepare_") as staging:
    report = _prepare_into(records, staging, opts, signature, out_dir)
    files.upload_tree(staging, out_dir, skip=("features",))
  return report


def _prepare_into(records, out_dir: str, opts: PrepareOptions, signature: dict,
                  final_dir: str) -> dict:
  """prepare() into a local directory; paths in the report name `final_dir`."""
  tfds = tf_compat.tfds()
  from data_pipelines.builders.pairs import MCEDPairs, PairsConfig  # pylint: disable=import-outside-toplevel

  t_start = time.perf_counter()
  if not opts.progress:
    tfds.disable_progress_bar()
  os.makedirs(out_dir, exist_ok=True)
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
  # 2-3. Audio features (cached: a re-run only extracts what is missing), the pair
  #      filter, and per-utterance statistics partials, on the process pool or on
  #      Beam (data_pipelines/beam_prepare.py); the same rules either way.
  cache = opts.cache_dir or os.path.join(out_dir, "features")
  filt = dataclasses.asdict(opts)
  if opts.engine == "beam":
    from data_pipelines import beam_prepare  # pylint: disable=import-outside-toplevel
    rep, reasons, groups, counts = beam_prepare.extract(
        [{"utt_id": r.utt_id, "audio": r.audio_path, "words": word_count(r.text),
          "speaker_key": speaker_key(r.speaker, r.utt_id), "train": r.split == "train"}
         for r in kept], cache, filt, opts.beam_options, opts.num_workers)
  else:
    rep = feat_lib.extract_many([(r.utt_id, r.audio_path) for r in kept], cache,
                                opts.num_workers, opts.min_audio_seconds, opts.progress)
    reasons = {r.utt_id: pair_filter_reason(rep.ok[r.utt_id]["seconds"], word_count(r.text),
                                             filt) for r in kept if r.utt_id in rep.ok}
    counts = {"extracted": sum(not v.get("cached") for v in rep.ok.values()),
              "cached": sum(bool(v.get("cached")) for v in rep.ok.values())}
    groups = None
  skipped.update(rep.skipped)
  final = []
  for r in kept:
    if r.utt_id not in rep.ok:
      continue
    if reasons.get(r.utt_id):
      _fail(skipped, r, reasons[r.utt_id])
    else:
      final.append(r)
  if not final:
    raise ValueError(f"{opts.name}: every utterance was skipped; first reasons: "
                     f"{list(skipped.values())[:5]}")
  splits = by_split(final)
  # 4. Per-dimension statistics on the train split (all data if there is none), and
  #    per speaker when asked: per-utterance partials merged by speaker, speakers
  #    merged in key order (the same values on one process or many).
  if opts.normalize not in ("global", "speaker"):
    raise ValueError(f"normalize must be 'global' or 'speaker', got {opts.normalize!r}")
  if groups is None:
    groups = standardize.grouped(
        (speaker_key(r.speaker, r.utt_id), r.utt_id, r.split == "train",
         standardize.partial(feat_lib.load_cached(cache, r.utt_id))) for r in final)
  mean, std, n = standardize.global_stats(groups["split" if "train" in splits else "speakers"])
  speakers = {}
  if opts.normalize == "speaker":
    for key, merged in groups["speakers"].items():
      m, sd, _ = standardize.finish(merged)
      speakers[key] = {"mean": m.tolist(), "std": sd.tolist()}
  # Raw IS16 values reach ~1e7 (spectral variance), beyond float16's 65504, so
  # float16 storage holds *standardised* features; float32 storage keeps raw ones.
  stored = "normalized" if opts.feature_dtype == "float16" else "raw"
  if opts.file_format not in FORMATS:
    raise ValueError(f"file format {opts.file_format!r}; known: {', '.join(FORMATS)}")
  with open(os.path.join(out_dir, "feature_stats.json"), "w", encoding="utf-8") as f:
    json.dump({"mean": mean.tolist(), "std": std.tolist(), "frames": int(n),
               "split": "train" if "train" in splits else "all", "stored": stored,
               "normalize": opts.normalize, "speakers": speakers}, f)
  if speakers:
    by_id = {r.utt_id: speakers[speaker_key(r.speaker, r.utt_id)] for r in final}
    norm = lambda u: (np.asarray(by_id[u]["mean"]), np.asarray(by_id[u]["std"]))
  else:
    norm = lambda u: (mean, std)
  # 5. Shards through the TFDS builder: one TFDS split per (split, frame bucket)
  #    part, each in the seeded order of data_pipelines/index.py, in num_shards
  #    shards; then the columnar index, with each example's shard.
  phys = buckets_lib.frame_buckets(opts.frame_buckets or (opts.max_frames,), opts.max_frames)
  frames = [rep.ok[r.utt_id]["frames"] for r in final]
  index, parts = index_lib.build(
      frames, [tokens[r.utt_id] for r in final], [r.split for r in final],
      tuple(opts.label_names), [r.label for r in final], phys, opts.num_shards,
      opts.file_format, [index_lib.order_key(opts.order_seed, r.utt_id) for r in final])
  cfg = PairsConfig(name=opts.name, label_names=tuple(opts.label_names),
                    feature_dtype=opts.feature_dtype, tensor_encoding=opts.tensor_encoding,
                    manual=bool(opts.manual_dir),
                    description=f"MCED utterances of corpus {opts.name}")
  # A part of n < num_shards examples gets n shards; shard counts are per part.
  shards = {name: min(opts.num_shards, len(rows)) for name, rows in parts.items()}
  # TFDS takes one shard count per build: parts with as many shards share one
  # build directory (all of them, unless a part is smaller than num_shards).
  by_count, shard_lengths, part_dirs = {}, {}, {}
  for name, n in shards.items():
    by_count.setdefault(n, []).append(name)
  for n, names in sorted(by_count.items()):
    builder = MCEDPairs(records_by_part={nm: [(int(i), final[i]) for i in parts[nm]]
                                         for nm in names},
                        cache_dir=cache, tokens_by_id=tokens,
                        normalize=norm if stored == "normalized" else None,
                        data_dir=os.path.join(out_dir, "tfds", f"shards{n}"), config=cfg,
                        file_format=opts.file_format)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        try_download_gcs=False, manual_dir=opts.manual_dir, num_shards=n))
    for nm in names:
      shard_lengths[nm] = [int(x) for x in builder.info.splits[nm].shard_lengths]
      part_dirs[nm] = os.path.relpath(builder.data_dir, out_dir)
  index_lib.assign_shards(index, parts, shard_lengths)
  with open(os.path.join(out_dir, index_lib.FILE), "wb") as f:
    f.write(index.to_bytes())
  with open(os.path.join(out_dir, index_lib.TOKENS), "wb") as f:
    f.write(index.tokens_bytes())
  final_tfds = fs.join(final_dir, "tfds")
  with open(os.path.join(out_dir, "records.jsonl"), "w", encoding="utf-8") as f:
    for i, r in enumerate(final):
      d = dataclasses.asdict(r)
      d["frames"] = int(index.frames[i])
      d["num_tokens"] = int(index.num_tokens[i])
      d["part"] = index_lib.part_name(r.split, int(index.bucket[i]))
      d["index"] = int(index.position[i])
      d["shard"] = int(index.shard[i])
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
      "engine": opts.engine, "extracted": counts["extracted"], "cached": counts["cached"],
      "audio_seconds_extracted": rep.audio_seconds,
      "extraction_wall_seconds": rep.wall_seconds,
      "extraction_workers": rep.workers,
      "rtf_per_core": rep.rtf_per_core if rep.workers else None,
      "tfds_dir": final_tfds, "file_format": opts.file_format,
      "frame_buckets": list(phys), "parts": {k: len(v) for k, v in parts.items()},
      "part_dirs": part_dirs, "shard_lengths": shard_lengths, "fingerprint": index.fingerprint(shard_lengths),
      "total_seconds": time.perf_counter() - t_start, "signature": signature,
  }
  with open(os.path.join(out_dir, "report.json"), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=1)
  print(f"[{opts.name}] {rep.summary()}")
  print(f"[{opts.name}] wrote {len(final)} utterances {report['splits']} to {final_tfds} "
        f"({opts.file_format}, {len(parts)} parts); skipped {len(skipped)}")
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
  flags.DEFINE_enum("format", "auto", ["auto", *FORMATS], "shard format (auto: tfrecord "
                    "for a URL --out, array_record on a local disk)", flag_values=fv)
  flags.DEFINE_integer("num_shards", 8, "shards per (split, frame bucket) part: the slots of "
                       "the batch plan; a multiple of the hosts that will read it",
                       flag_values=fv)
  flags.DEFINE_list("frame_buckets", ["250", "500", "1000"], "frame buckets (the last "
                    "bucket is max_frames)", flag_values=fv)
  flags.DEFINE_integer("max_frames", 1000, "longest padded length (longer clips are cut "
                       "by the reader, and counted)", flag_values=fv)
  flags.DEFINE_enum("normalize", "global", ["global", "speaker"], "feature standardisation",
                    flag_values=fv)
  flags.DEFINE_enum("engine", "pool", ["pool", "beam"], "pool: processes on this machine; "
                    "beam: an Apache Beam pipeline (local cores, or --beam_options)",
                    flag_values=fv)
  flags.DEFINE_string("beam_options", "", "comma-separated Beam pipeline options, e.g. "
                      "--runner=DataflowRunner,--project=P,--region=R,--temp_location=gs://...",
                      flag_values=fv)
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
                        manual_dir=f.root if corpus.licensed else None,
                        file_format=f.format, num_shards=f.num_shards,
                        frame_buckets=tuple(int(b) for b in f.frame_buckets),
                        max_frames=f.max_frames, normalize=f.normalize, engine=f.engine,
                        beam_options=f.beam_options)
  return prepare(corpus.read(f.root), f.out, opts)


if __name__ == "__main__":
  import sys  # pylint: disable=ungrouped-imports
  main(sys.argv)
