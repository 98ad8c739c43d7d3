"""Real Opus pairs (../shared/data/audio/pairs_real): a manifest prepares under the
long-utterance rule with per-speaker standardisation, the teacher reports what it
sees in the pairs, confidence selection drops pairs, and distillation (word-token
FL) trains a step."""

import csv
import json
import os

import numpy as np

from data_pipelines import corpora
from data_pipelines.dataset import PreparedDataset
from data_pipelines.stage import prepare_corpus
from mced_jax.layout import Layout
from mced_jax.runtime.writers import read_jsonl
from mced_jax.train import distill
from tests.conftest import SHARED_DATA, require_shared_data


def _manifest(tmp_path) -> str:
  """8 Kathleen ARCTIC prompts (3-4 s, one speaker) + 2 LibriSpeech readings
  (> 12 s: the rule drops them) as one manifest of absolute Opus paths."""
  root = os.path.join(SHARED_DATA, "audio", "pairs_real")
  rows = []
  for folder, n in (("kathleen_arctic", 8), ("mini_librispeech", 40)):
    with open(os.path.join(root, folder, "manifest.csv"), encoding="utf-8") as f:
      rows += [dict(r, audio=os.path.join(root, folder, r["audio"]))
               for r in list(csv.DictReader(f))[:n]]
  import soundfile as sf  # pylint: disable=import-outside-toplevel
  short = rows[:8]
  long_ = [r for r in rows[8:] if sf.info(r["audio"]).duration > 13.0][:2]
  path = str(tmp_path / "pairs.csv")
  with open(path, "w", encoding="utf-8", newline="") as f:
    w = csv.DictWriter(f, fieldnames=["audio", "text", "speaker"])
    w.writeheader()
    w.writerows({k: r[k] for k in ("audio", "text", "speaker")} for r in short + long_)
  return path


def test_opus_manifest_prepares_and_distils_a_step(tmp_path, tiny_config):
  require_shared_data()
  out = str(tmp_path / "prepared")
  rep = prepare_corpus(corpora.get("manifest"), _manifest(tmp_path), out, max_tokens=24,
                       max_pair_seconds=12.0, normalize="speaker", num_workers=1,
                       progress=False, num_shards=2, frame_buckets=(600,), max_frames=600)
  assert rep["written"] == 8 and rep["dropped_long"] == 2, rep["skipped_items"]
  ds = PreparedDataset(out)
  assert ds.normalize == "speaker" and max(r["frames"] for r in ds.records) <= 1200
  cfg = tiny_config
  with cfg.unlocked():
    cfg.teacher.vocab_size = 30522
    cfg.data.source, cfg.data.path = "prepared", out
    cfg.data.max_frames, cfg.data.max_tokens, cfg.data.frame_buckets = 600, 24, (600,)
    cfg.distill.batch_size, cfg.distill.num_steps = 4, 1
    cfg.distill.fl_tokens = "words"
    cfg.distill.teacher_report = True
    cfg.distill.min_teacher_confidence = 1e-3  # a random teacher: keeps every pair
  res = distill.train(cfg, Layout(str(tmp_path / "run")))
  assert res.status == "done" and int(res.state.step) == 1
  logs = [r for r in read_jsonl(str(tmp_path / "run" / "distill" / "metrics.jsonl"))
          if "loss" in r]
  assert logs and np.isfinite(logs[-1]["loss"])
  report = json.load(open(tmp_path / "run" / "distill" / "teacher_on_pairs.json"))
  assert report["pairs"] == 8 and len(report["per_utterance"]) == 8
  assert abs(sum(report["predicted_class_share"].values()) - 1) < 1e-6
  # Selection above every pair's confidence keeps none: a clear error.
  top = max(c for _, c in report["per_utterance"].values())
  with cfg.unlocked():
    cfg.distill.min_teacher_confidence = top + 1e-3
  try:
    distill.train(cfg, Layout(str(tmp_path / "run2")))
  except ValueError as e:
    assert "keeps none of 8 pairs" in str(e)
  else:
    raise AssertionError("selection that keeps no pair must fail")


def test_word_token_mask_drops_cls_and_sep(tiny_config):
  """fl_tokens='words' changes FL: the loss differs from 'all' on the same batch."""
  import jax  # pylint: disable=import-outside-toplevel
  from mced_jax.runtime import sharding as shd# pylint: disable=import-outside-toplevel
  from data_pipelines.synthetic import SyntheticPairs  # pylint: disable=import-outside-toplevel
  out = {}
  for mode in ("all", "words"):
    with tiny_config.unlocked():
      tiny_config.distill.fl_tokens = mode
    d = distill.build(tiny_config, mesh=shd.make_mesh(1, 1, devices=jax.devices()[:1]))
    src = SyntheticPairs(8, 48, 12, 100, feature_dim=130, cls_id=1, sep_id=2)
    b = {k: jax.numpy.asarray(v) for k, v in src.global_batch_at(0).items()}
    params = d.init_params(jax.random.PRNGKey(0))
    # jitted: op by op, the eager loss dispatches thousands of tiny ops (over a minute)
    loss = jax.jit(lambda p, b, t: d.loss_fn(p, b, jax.random.PRNGKey(1), t, train=False)[1])
    out[mode] = jax.device_get(loss(params, b, d.teacher_params))
  assert out["all"]["rl"] == out["words"]["rl"]
  assert out["all"]["fl_total"] != out["words"]["fl_total"]
