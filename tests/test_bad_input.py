"""Bad input everywhere: each case is a clear error or a counted skip (the README's
"Bad input" table lists these tests)."""

import csv
import glob
import os

import numpy as np
import pytest
import soundfile as sf

from data_pipelines import features as F
from data_pipelines import input_pipeline as ip
from data_pipelines.adapters import read_manifest
from data_pipelines.prepare import PrepareOptions, prepare
from mced_jax.train import distill
from tests.data_pipelines.fixtures import write_wav


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
          PrepareOptions(name="small", num_workers=1, progress=False))
  return out


def test_over_long_inputs_are_truncated_and_flagged(small_corpus):
  cfg = ip.ReaderConfig(batch_size=6, max_frames=150, max_tokens=12, frame_buckets=(150,),
                        train=False)
  b = next(ip.iterate(small_corpus, "train", cfg))
  assert b["features"].shape == (6, 150, 130) and b["input_ids"].shape == (6, 12)
  frames = np.array([100 + 40 * i for i in range(6)])  # ~ seconds x 100
  assert b["truncated_frames"].sum() == (frames > 150).sum()  # clips over 1.5 s
  # 5 of the 6 transcripts exceed 12 WordPieces (the 7-word one has 9 with [CLS]/[SEP])
  cut = b["truncated_tokens"]
  assert cut.sum() == 5
  assert (b["input_ids"][cut, -1] == 102).all()  # [SEP] kept at the cut
  assert (b["attention_mask"][~cut].sum(1) == 9).all()


def test_corrupt_tfrecord_shard_is_a_clear_error(small_corpus, tmp_path):
  import shutil
  bad = str(tmp_path / "bad")
  shutil.copytree(small_corpus, bad)
  shard = glob.glob(os.path.join(ip.dataset_dir(bad), "*.tfrecord*"))[0]
  with open(shard, "r+b") as f:
    f.truncate(os.path.getsize(shard) // 2)
  src = ip.TFRecordPairs(bad, "train", 2, ip.ReaderConfig(batch_size=2, max_frames=300))
  with pytest.raises(IOError, match="corrupt or truncated TFRecord"):
    for _ in zip(range(20), src.iterator()):
      pass


def test_missing_prepared_dataset_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no prepared dataset"):
    ip.dataset_dir(str(tmp_path))


def test_nan_and_wrong_width_features_are_rejected(tmp_path):
  sf.write(str(tmp_path / "nan.wav"), np.full(16000, np.nan, np.float32), 16000,
           subtype="FLOAT")
  with pytest.raises(F.BadAudio, match="NaN or Inf"):
    F.load_audio(str(tmp_path / "nan.wav"))
  batch = {"features": np.zeros((2, 10, 64), np.float32),
           "input_ids": np.ones((2, 4), np.int32)}
  with pytest.raises(ValueError, match="64 dims, the student expects 130"):
    distill._check_batch(batch, vocab=100, feature_dim=130)
  batch["features"] = np.zeros((2, 10, 130), np.float32)
  batch["input_ids"][0, 0] = 500
  with pytest.raises(ValueError, match="different vocabularies"):
    distill._check_batch(batch, vocab=100, feature_dim=130)


def test_bad_config_values_are_clear(tiny_config, tmp_path):
  with tiny_config.unlocked():
    tiny_config.distill.on_nonfinite = "ignore"
  with pytest.raises(ValueError, match="on_nonfinite"):
    distill.train(tiny_config, str(tmp_path))
  with tiny_config.unlocked():
    tiny_config.distill.on_nonfinite = "skip"
    tiny_config.data.source = "tfrecord"
  with pytest.raises(ValueError, match="needs --config.data.path"):
    distill.make_source(tiny_config)
  with tiny_config.unlocked():
    tiny_config.distill.lambdas = (0.1,)
  with pytest.raises(ValueError, match="same length"):
    distill.build(tiny_config)
