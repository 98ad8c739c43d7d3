"""Small helpers shared by tests."""

import numpy as np


def pad_batch(batch: dict, extra_frames: int, extra_tokens: int, rng=None) -> dict:
  """Appends padding to every sequence. Padded feature frames are filled with
  large random garbage (not zeros) so that any leak of padding would show."""
  rng = rng or np.random.default_rng(123)
  b, t, f = batch["features"].shape
  feats = np.concatenate(
      [batch["features"], 1e3 * rng.standard_normal((b, extra_frames, f)).astype(np.float32)], 1)
  fmask = np.concatenate([batch["frame_mask"], np.zeros((b, extra_frames), bool)], 1)
  # Garbage also in the already padded region of the original batch.
  feats = np.where(fmask[..., None], feats, 1e3).astype(np.float32)
  ids = np.concatenate([batch["input_ids"], np.zeros((b, extra_tokens), np.int32)], 1)
  am = np.concatenate([batch["attention_mask"], np.zeros((b, extra_tokens), np.int32)], 1)
  return {"features": feats, "frame_mask": fmask, "input_ids": ids, "attention_mask": am}


def write_prepared(root: str, examples, classes=(), name: str = "fixture",
                   stats: str = "raw") -> str:
  """A prepared dataset (the `data_pipelines.prepare` layout, TFDS ArrayRecord
  shards) from in-memory examples, without audio: dicts with utt_id, features
  [T, 130] (raw), input_ids, and optional label / speaker / split / session / text.
  `stats="raw"` stores float32 raw features (as labelled corpora are prepared)."""
  import json
  import os

  import tensorflow_datasets as tfds

  from data_pipelines import features as F
  from data_pipelines.builders.pairs import MCEDPairs, PairsConfig
  from data_pipelines.records import Utterance, by_split
  cache = os.path.join(root, "features")
  os.makedirs(cache, exist_ok=True)
  utts, tokens = [], {}
  for ex in examples:
    np.save(F.feature_path(cache, ex["utt_id"]), np.asarray(ex["features"], np.float32))
    tokens[ex["utt_id"]] = np.asarray(ex.get("input_ids", [101, 102]), np.int32)
    utts.append(Utterance(utt_id=ex["utt_id"], audio_path=f"/nowhere/{ex['utt_id']}.wav",
                          text=ex.get("text", ""), label=ex.get("label"),
                          speaker=ex.get("speaker", ""), split=ex.get("split", "train"),
                          session=ex.get("session", ex.get("speaker", ""))))
  x = np.concatenate([np.asarray(e["features"], np.float64) for e in examples
                      if e.get("split", "train") == "train"])
  mean, std = x.mean(0), np.where(x.std(0) < 1e-6, 1.0, x.std(0))
  normalized = stats != "raw"
  cfg = PairsConfig(name=name, label_names=tuple(classes),
                    feature_dtype="float16" if normalized else "float32")
  MCEDPairs(records_by_split=by_split(utts), cache_dir=cache, tokens_by_id=tokens,
            normalize=(mean, std) if normalized else None,
            data_dir=os.path.join(root, "tfds"), config=cfg,
            file_format="array_record").download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  with open(os.path.join(root, "records.jsonl"), "w", encoding="utf-8") as f:
    for u, ex in zip(utts, examples):
      f.write(json.dumps(dict(vars(u), frames=len(ex["features"]),
                              num_tokens=len(tokens[u.utt_id]))) + "\n")
  with open(os.path.join(root, "feature_stats.json"), "w", encoding="utf-8") as f:
    json.dump({"mean": mean.tolist(), "std": std.tolist(),
               "stored": "normalized" if normalized else "raw"}, f)
  with open(os.path.join(root, "report.json"), "w", encoding="utf-8") as f:
    json.dump({"name": name, "labels": {c: 0 for c in classes} or None}, f)
  return root
