"""Preparation's heavy half on Apache Beam: IS16 features, the pair filter and the
statistics, on as many workers as the runner gives.

    python -m data_pipelines.prepare --corpus=manifest --root=pairs.csv --out=DIR \
        --engine=beam [--beam_options="--runner=DataflowRunner,--project=P,..."]

One element per utterance the text stage kept (data_pipelines/prepare.py):

  utterance -> ExtractFn: the feature cache on the output filesystem
               (<features>/<id>.npy + <id>.json; an utterance found there is not
               extracted again, so a re-run after a crash only does the rest)
            -> the pair filter (the same rule and reasons as the process pool)
            -> a status line per utterance                  -> <run>/items-*.jsonl
            -> per-utterance statistics partials, grouped by speaker and merged in
               utterance order (data_pipelines/standardize.py) -> <run>/speakers-*.jsonl

The driver then reads those files, merges the speakers in key order into the
global statistics (the same float64 values as the process pool), and writes the
shards with the TFDS builder from the cache, as after the process pool. Without
--beam_options the local runner uses every core (multi-processing; one worker
runs in memory).
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid

import numpy as np

from data_pipelines import features as feat_lib
from data_pipelines import standardize
from mced_jax.runtime import fs


def pair_filter_reason(seconds: float, words: int, opts: dict) -> str | None:
  """Why the paper's pair filter or the long-utterance rule drops a pair (None: kept)."""
  if not opts["filter_pairs"]:
    return None
  if seconds < opts["min_pair_seconds"]:
    return f"pair filter: {seconds:.2f} s < {opts['min_pair_seconds']} s"
  if words < opts["min_pair_words"]:
    return f"pair filter: fewer than {opts['min_pair_words']} words"
  if opts["max_pair_seconds"] > 0 and seconds > opts["max_pair_seconds"]:
    return f"long-utterance rule: {seconds:.2f} s > {opts['max_pair_seconds']} s"
  return None


def _save_npy(path: str, x: np.ndarray) -> None:
  buf = io.BytesIO()
  np.save(buf, x)
  fs.write_bytes(path, buf.getvalue())


def _sidecar(cache_dir: str, utt_id: str) -> str:
  return feat_lib.feature_path(cache_dir, utt_id)[: -len(".npy")] + ".json"


class ExtractFn:
  """Beam DoFn body (wrapped in `_dofn`): one utterance in, its status out (and,
  when kept, its statistics partial on the `stats` output)."""

  def __init__(self, cache_dir: str, opts: dict):
    self.cache_dir, self.opts = cache_dir, opts
    self._extractor = None

  def __call__(self, item: dict):
    uid, path = item["utt_id"], item["audio"]
    npy, meta = feat_lib.feature_path(self.cache_dir, uid), _sidecar(self.cache_dir, uid)
    t0 = time.perf_counter()
    cached = fs.exists(meta) and fs.exists(npy)
    try:
      if cached:
        x = feat_lib.load_cached(self.cache_dir, uid)
        seconds = float(json.loads(fs.read_text(meta))["seconds"])
      else:
        if self._extractor is None:
          self._extractor = feat_lib.IS16Extractor()
        signal = feat_lib.load_audio(path)
        seconds = feat_lib.check_signal(path, signal, self.opts["min_audio_seconds"])
        x = self._extractor(signal)
        if x.shape[0] == 0:
          raise feat_lib.BadAudio(f"{path}: openSMILE produced no frames")
        if not np.isfinite(x).all():
          raise feat_lib.BadAudio(f"{path}: features contain NaN/Inf")
        _save_npy(npy, x)  # the .npy first: the sidecar marks a finished utterance
        fs.write_text(meta, json.dumps({"utt_id": uid, "seconds": seconds,
                                        "frames": int(x.shape[0])}))
    except feat_lib.BadAudio as e:
      return {"utt_id": uid, "error": str(e)}, None
    except Exception as e:  # noqa: BLE001 - one broken file must not stop the job
      return {"utt_id": uid, "error": f"{path}: {type(e).__name__}: {e}"}, None
    status = {"utt_id": uid, "frames": int(x.shape[0]), "seconds": seconds, "cached": cached,
              "extract_s": time.perf_counter() - t0}
    why = pair_filter_reason(seconds, item["words"], self.opts)
    if why is not None:
      status["filtered"] = why
      return status, None
    n, mean, m2 = standardize.partial(x)
    return status, (item["speaker_key"], (uid, item["train"], n, mean.tolist(), m2.tolist()))


def _group(kv) -> str:
  """One speaker's partials merged (utterance order), as a JSON line."""
  key, rows = kv
  merged = standardize.grouped((key, uid, train, (n, np.asarray(m), np.asarray(v)))
                               for uid, train, n, m, v in rows)
  out = {"key": key}
  for part in ("speakers", "split"):
    n, mean, m2 = merged[part][key]
    out[part] = [n, None if mean is None else mean.tolist(), None if m2 is None else m2.tolist()]
  return json.dumps(out)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pipeline_options(beam_options: str, workers: int):
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel
  if beam_options:
    return PipelineOptions([o for o in beam_options.split(",") if o])
  # The local runner's worker processes import this project from its root.
  paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
  if ROOT not in paths:
    os.environ["PYTHONPATH"] = os.pathsep.join([ROOT] + paths)
  return PipelineOptions(["--runner=DirectRunner", f"--direct_num_workers={workers}",
                          "--direct_running_mode=" + ("multi_processing" if workers > 1
                                                      else "in_memory")])


def extract(items: list[dict], cache_dir: str, opts: dict, beam_options: str = "",
            workers: int = 0):
  """Runs the pipeline over `items` ({utt_id, audio, speaker_key, train, words});
  returns (feat_lib.ExtractionReport, {utt_id: filter reason}, grouped statistics
  {"speakers": {key: merged}, "split": {key: merged}}, extraction counts)."""
  import apache_beam as beam  # pylint: disable=import-outside-toplevel
  workers = workers or max(1, len(os.sched_getaffinity(0)))
  run = fs.join(cache_dir, "_runs", uuid.uuid4().hex[:12])
  t0 = time.perf_counter()
  fn = ExtractFn(cache_dir, opts)

  class Extract(beam.DoFn):
    def process(self, item):
      status, stat = fn(item)
      yield status
      if stat is not None:
        yield beam.pvalue.TaggedOutput("stats", stat)

  class WriteLines(beam.DoFn):
    """Each bundle's lines to a file of its own under `run` (any fs URL)."""

    def __init__(self, prefix):
      self.prefix = prefix

    def start_bundle(self):
      self.lines = []

    def process(self, line):
      self.lines.append(line)

    def finish_bundle(self):
      if self.lines:
        fs.write_text(fs.join(run, f"{self.prefix}-{uuid.uuid4().hex}.jsonl"),
                      "\n".join(self.lines) + "\n")

  with beam.Pipeline(options=_pipeline_options(beam_options, workers)) as p:
    out = (p | "Utterances" >> beam.Create(items)
           | "Extract" >> beam.ParDo(Extract()).with_outputs("stats", main="items"))
    _ = out.items | "Status" >> beam.Map(json.dumps) | "WriteItems" >> beam.ParDo(
        WriteLines("items"))
    _ = (out.stats | "BySpeaker" >> beam.GroupByKey() | "Merge" >> beam.Map(_group)
         | "WriteSpeakers" >> beam.ParDo(WriteLines("speakers")))
  wall = time.perf_counter() - t0
  ok, skipped, reasons, audio_s, counts = {}, {}, {}, 0.0, {"extracted": 0, "cached": 0}
  speakers, split = {}, {}
  for name in fs.listdir(run):
    for line in fs.read_text(fs.join(run, name)).splitlines():
      d = json.loads(line)
      if name.startswith("speakers"):
        for part, target in (("speakers", speakers), ("split", split)):
          n, m, v = d[part]
          target[d["key"]] = (n, None if m is None else np.asarray(m),
                              None if v is None else np.asarray(v))
      elif "error" in d:
        skipped[d["utt_id"]] = d["error"]
      else:
        ok[d["utt_id"]] = {"frames": d["frames"], "seconds": d["seconds"], "cached": d["cached"]}
        counts["cached" if d["cached"] else "extracted"] += 1
        if not d["cached"]:
          audio_s += d["seconds"]
        if "filtered" in d:
          reasons[d["utt_id"]] = d["filtered"]
  fs.rmtree(run)
  rep = feat_lib.ExtractionReport(ok, skipped, audio_s, wall, workers if counts["extracted"] else 0)
  return rep, reasons, {"speakers": speakers, "split": split}, counts
