"""features -> TFRecords (TFDS) -> tf.data: same arrays, masks and tokens back;
bad items reported and skipped; per-host shards disjoint and complete; resume."""

import csv
import json
import os

import numpy as np
import pytest

from data_pipelines import features as F
from data_pipelines import input_pipeline as ip
from data_pipelines.adapters import read_manifest
from data_pipelines.prepare import PrepareOptions, prepare
from data_pipelines.tokenize import WordPiece
from tests.data_pipelines.fixtures import write_corrupt, write_wav

TEXTS = ["what a lovely surprise this is", "i can not believe you did that again",
         "please leave me alone now", "we won the whole thing", "it is just an ordinary day",
         "why would anyone do such a thing"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpus")
  rows = []
  for i in range(12):
    write_wav(str(root / "clips" / f"u{i:02d}.wav"), 0.8 + 0.2 * i, seed=i,
                  f0=110 + 10 * i)
    rows.append({"audio": f"clips/u{i:02d}.wav", "text": TEXTS[i % len(TEXTS)],
                 "label": ["calm", "excited"][i % 2], "speaker": f"spk{i % 3}",
                 "split": "train" if i < 8 else "test"})
  # The three bad items of acceptance point 6.
  write_corrupt(str(root / "clips" / "corrupt.wav"))
  rows.append({"audio": "clips/corrupt.wav", "text": "this file is broken", "label": "calm",
               "speaker": "spk0", "split": "train"})
  write_wav(str(root / "clips" / "notext.wav"), 1.5, seed=99)
  rows.append({"audio": "clips/notext.wav", "text": "  ", "label": "calm", "speaker": "spk0",
               "split": "train"})
  write_wav(str(root / "clips" / "tiny.wav"), 0.2, seed=98)
  rows.append({"audio": "clips/tiny.wav", "text": "too short to use", "label": "calm",
               "speaker": "spk0", "split": "train"})
  with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  out = str(root / "prepared")
  report = prepare(read_manifest(str(root / "manifest.csv")), out,
                   PrepareOptions(name="fixture", label_names=("calm", "excited"),
                                  feature_dtype="float32", num_workers=1, progress=False))
  return {"root": root, "out": out, "report": report, "rows": rows}


def read_all(out, split, **kw):
  cfg = ip.ReaderConfig(batch_size=3, max_frames=400, frame_buckets=(150, 400), train=False,
                        normalize=kw.pop("normalize", False), with_ids=True)
  got = {}
  for b in ip.iterate(out, split, cfg, **kw):
    for i in np.flatnonzero(b["example_mask"]):
      got[b["utt_id"][i].decode()] = {k: v[i] for k, v in b.items()}
      assert b["features"].shape[1] in (150, 400)  # static bucket shapes only
  return got


def test_bad_items_reported_and_skipped(corpus):
  rep = corpus["report"]
  assert rep["written"] == 12 and rep["skipped"] == 3
  sk = rep["skipped_items"]
  assert "unreadable" in sk["corrupt"] and "corrupt.wav" in sk["corrupt"]
  assert "empty transcript" in sk["notext"]
  assert "too short" in sk["tiny"]
  on_disk = json.load(open(os.path.join(corpus["out"], "report.json"), encoding="utf-8"))
  assert on_disk["skipped"] == 3 and on_disk["splits"] == {"train": 8, "test": 4}


def test_round_trip_gives_back_features_masks_tokens_labels(corpus):
  out = corpus["out"]
  wp = WordPiece(max_tokens=64)
  got = {**read_all(out, "train"), **read_all(out, "test")}
  assert sorted(got) == [f"u{i:02d}" for i in range(12)]
  for i in range(12):
    g = got[f"u{i:02d}"]
    want = np.load(F.feature_path(os.path.join(out, "features"), f"u{i:02d}"))
    n = want.shape[0]
    assert g["frame_mask"].sum() == n and g["frame_mask"][:n].all()
    np.testing.assert_array_equal(g["features"][:n], want)
    assert not g["features"][n:].any()
    ids, _ = wp.encode(TEXTS[i % len(TEXTS)])
    k = len(ids)
    np.testing.assert_array_equal(g["input_ids"][:k], ids)
    assert g["attention_mask"].sum() == k and not g["input_ids"][k:].any()
    assert g["label"] == i % 2


def test_normalisation_uses_train_stats(corpus):
  out = corpus["out"]
  mean, std = ip.load_stats(out)
  train_x = np.concatenate([np.load(F.feature_path(os.path.join(out, "features"), f"u{i:02d}"))
                            for i in range(8)]).astype(np.float64)
  np.testing.assert_allclose(mean, train_x.mean(0), rtol=1e-4, atol=1e-4)
  g = read_all(out, "test", normalize=True)["u09"]
  raw = np.load(F.feature_path(os.path.join(out, "features"), "u09"))
  np.testing.assert_allclose(g["features"][: raw.shape[0]], (raw - mean) / std, rtol=1e-5,
                             atol=1e-5)


def test_two_hosts_get_disjoint_complete_shards(corpus):
  out = corpus["out"]
  shards = [set(read_all(out, "train", process_index=i, process_count=2)) for i in range(2)]
  assert shards[0] and shards[1]
  assert not shards[0] & shards[1]
  assert shards[0] | shards[1] == {f"u{i:02d}" for i in range(8)}


def test_training_stream_is_deterministic_and_resumes(corpus):
  out = corpus["out"]
  cfg = ip.ReaderConfig(batch_size=2, max_frames=400, frame_buckets=(150, 400), seed=3,
                        with_ids=True)

  def take(start, n):
    it = ip.make_dataset(out, "train", cfg, start_step=start).as_numpy_iterator()
    return [next(it) for _ in range(n)]

  full = take(0, 7)
  again = take(0, 7)
  resumed = take(4, 3)
  for a, b in zip(full, again):
    np.testing.assert_array_equal(a["utt_id"], b["utt_id"])
  for a, b in zip(full[4:], resumed):
    np.testing.assert_array_equal(a["utt_id"], b["utt_id"])
    np.testing.assert_array_equal(a["features"], b["features"])


def test_rerun_skips_finished_work(corpus, capsys):
  root, out = corpus["root"], corpus["out"]
  before = os.path.getmtime(os.path.join(ip.dataset_dir(out), "dataset_info.json"))
  rep = prepare(read_manifest(str(root / "manifest.csv")), out,
                PrepareOptions(name="fixture", label_names=("calm", "excited"),
                               feature_dtype="float32", num_workers=1, progress=False))
  assert rep["written"] == 12
  assert rep["extraction_workers"] == 0 or rep["audio_seconds_extracted"] == 0
  assert os.path.getmtime(os.path.join(ip.dataset_dir(out), "dataset_info.json")) == before
