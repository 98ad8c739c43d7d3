"""Bad input everywhere: each case is a clear error or a counted skip (the README's
"Bad input" table lists these tests)."""

import csv
import os

import numpy as np
import pytest
import soundfile as sf

from data_pipelines import batch_plan
from data_pipelines import dataset as dataset_lib
from data_pipelines import features as F
from data_pipelines.adapters import read_manifest
from data_pipelines.prepare import PrepareOptions, prepare
from tests.data_pipelines.fixtures import write_wav
from mced_jax.layout import Layout
from mced_jax.runtime import sharding as shd
from mced_jax.train import distill


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("small")
  rows = []
  for i in range(6):
    write_wav(str(root / f"c{i}.wav"), 1.0 + 0.4 * i, seed=i)
    rows.append({"audio": f"c{i}.wav", "text": "a long enough sentence of words here " * (1 + i)})
  with open(root / "m.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=["audio", "text"])
    w.writeheader()
    w.writerows(rows)
  out = str(root / "prepared")
  prepare(read_manifest(str(root / "m.csv")), out,
          PrepareOptions(name="small", num_workers=1, progress=False, num_shards=1,
                         frame_buckets=(150,), max_frames=150))
  return out


def test_over_long_inputs_are_truncated_and_flagged(small_corpus):
  ds = dataset_lib.PreparedDataset(small_corpus)
  rows_of = ds.index.rows_of("train")
  ix = ds.index
  plan = batch_plan.BatchPlan(ix.shard[rows_of], ix.bucket[rows_of], ix.buckets, 1, 6,
                              max_frames=150)
  b = batch_plan.PairLoader(ds, rows_of, plan, np.arange(6), max_frames=150,
                            max_tokens=12).load(0)
  assert b["features"].shape == (6, 150, 130) and b["input_ids"].shape == (6, 12)
  frames = ix.frames[rows_of]
  assert b["count_truncated_frames"] == (frames > 150).sum() >= 3  # clips over 1.5 s
  # 5 of the 6 transcripts exceed 12 WordPieces (the 7-word one has 9 with [CLS]/[SEP])
  assert b["count_truncated_tokens"] == 5
  cut = b["attention_mask"].sum(1) == 12
  assert cut.sum() == 5 and (b["input_ids"][cut, -1] == 102).all()  # [SEP] kept at the cut
  assert (b["attention_mask"][~cut].sum(1) == 9).all()


def test_corrupt_shard_is_a_clear_error(small_corpus, tmp_path):
  import shutil
  bad = str(tmp_path / "bad")
  shutil.copytree(small_corpus, bad)
  ds = dataset_lib.PreparedDataset(bad)
  shard = ds.part_files(sorted(ds.report["part_dirs"])[0])[0]
  with open(shard, "r+b") as f:
    f.truncate(os.path.getsize(shard) // 2)
  ds = dataset_lib.PreparedDataset(bad)
  with pytest.raises(IOError, match="corrupt or truncated shard data"):
    for r in ds.select("train"):
      ds.example(r)


def test_missing_prepared_dataset_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="records.jsonl"):
    dataset_lib.PreparedDataset(str(tmp_path))
  (tmp_path / "records.jsonl").write_text("")
  (tmp_path / "feature_stats.json").write_text('{"mean": [0], "std": [1]}')
  with pytest.raises(ValueError, match="prepared by an older mced_jax"):
    dataset_lib.PreparedDataset(str(tmp_path))


def test_nan_and_wrong_width_features_are_rejected(tmp_path):
  sf.write(str(tmp_path / "nan.wav"), np.full(16000, np.nan, np.float32), 16000,
           subtype="FLOAT")
  with pytest.raises(F.BadAudio, match="NaN or Inf"):
    F.load_audio(str(tmp_path / "nan.wav"))


def test_wrong_width_features_and_foreign_vocab_are_clear_errors(tiny_config, tmp_path):
  mesh = shd.from_config(tiny_config.mesh)
  with tiny_config.unlocked():
    tiny_config.student.feature_dim = 64  # the synthetic source makes 64-d features
  _, feed, _ = distill.batches(tiny_config, Layout(str(tmp_path)), mesh, vocab=100)
  with tiny_config.unlocked():
    tiny_config.student.feature_dim = 130
  with pytest.raises(ValueError, match="64 dims, the student expects 130"):
    next(feed(0))
  with tiny_config.unlocked():
    tiny_config.teacher.source = "path"  # synthetic ids then span BERT's 30522 WordPieces
  _, feed, _ = distill.batches(tiny_config, Layout(str(tmp_path)), mesh, vocab=100)
  with pytest.raises(ValueError, match="different vocabularies"):
    next(feed(0))


def test_bad_config_values_are_clear(tiny_config, tmp_path):
  with tiny_config.unlocked():
    tiny_config.distill.on_nonfinite = "ignore"
  with pytest.raises(ValueError, match="on_nonfinite"):
    distill.train(tiny_config, Layout(str(tmp_path)))
  with tiny_config.unlocked():
    tiny_config.distill.on_nonfinite = "skip"
    tiny_config.data.source = "tfrecord"
  with pytest.raises(ValueError, match="unknown data.source 'tfrecord'"):
    distill.train(tiny_config, Layout(str(tmp_path)))
  with tiny_config.unlocked():
    tiny_config.data.source = "prepared"
  with pytest.raises(FileNotFoundError, match="no records.jsonl"):
    distill.train(tiny_config, Layout(str(tmp_path)))
  with tiny_config.unlocked():
    tiny_config.distill.lambdas = (0.1,)
  with pytest.raises(ValueError, match="same length"):
    distill.build(tiny_config)
