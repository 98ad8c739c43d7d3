"""Small helpers shared by tests."""

import subprocess
import tempfile
import time

import numpy as np


def spawn(cmd, env, cwd) -> subprocess.Popen:
  """A process whose stdout and stderr go to a file, not a pipe. A pipe holds
  64 KiB: a process that nobody reads while it runs (a test polling its metrics,
  or the later processes of a job read one after another) would block in its write
  once it had logged more, and a blocked host stalls every other host in the next
  collective."""
  log = tempfile.TemporaryFile(mode="w+", encoding="utf-8")
  p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
  p.log = log
  return p


def output(p: subprocess.Popen, timeout: float | None = None) -> str:
  """Everything `p` (from `spawn`) wrote, once it has exited."""
  p.wait(timeout=timeout)
  p.log.seek(0)
  return p.log.read()


def outputs(procs, timeout: float) -> list[str]:
  """The outputs of all `procs` (from `spawn`), all exited within `timeout` s."""
  deadline = time.time() + timeout
  return [output(p, timeout=max(1.0, deadline - time.time())) for p in procs]


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
  """A prepared dataset from in-memory examples, without audio: dicts with utt_id,
  features [T, 130] (raw), and optional label / speaker / split / session / text.
  The features go into the preparation's feature cache, which
  `data_pipelines.prepare` then takes as already extracted. `stats="raw"` stores
  float32 raw features (as labelled corpora are prepared)."""
  import json
  import os

  from data_pipelines import features as F
  from data_pipelines.prepare import PrepareOptions, prepare
  from data_pipelines.records import Utterance
  cache = os.path.join(root, "features")
  os.makedirs(cache, exist_ok=True)
  utts = []
  with open(os.path.join(cache, F.DURATIONS), "w", encoding="utf-8") as log:
    for ex in examples:
      x = np.asarray(ex["features"], np.float32)
      np.save(F.feature_path(cache, ex["utt_id"]), x)
      log.write(json.dumps({"utt_id": ex["utt_id"], "seconds": len(x) / 100}) + "\n")
      utts.append(Utterance(utt_id=ex["utt_id"], audio_path=f"/nowhere/{ex['utt_id']}.wav",
                            text=ex.get("text", ""), label=ex.get("label"),
                            speaker=ex.get("speaker", ""), split=ex.get("split", "train"),
                            session=ex.get("session", ex.get("speaker", ""))))
  prepare(utts, root, PrepareOptions(
      name=name, label_names=tuple(classes), require_text=False, num_workers=1,
      progress=False, feature_dtype="float32" if stats == "raw" else "float16",
      file_format="array_record", frame_buckets=(), max_frames=1000))
  return root


def tiny_bert_dir(out: str) -> str:
  """A tiny random BERT (2 layers, hidden 32) with the real WordPiece vocabulary,
  saved as a Hugging Face directory: a fast teacher_mlm / teacher_cls init."""
  import os

  from transformers import BertConfig, FlaxBertModel

  from mced_jax.models import teacher
  cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, max_position_embeddings=64)
  teacher.save_hf(FlaxBertModel, cfg, FlaxBertModel(cfg, seed=0).params, out,
                  os.path.join(teacher.default_teacher_dir(), "vocab.txt"))
  return out
