"""features -> TFDS shards (ArrayRecord and TFRecord) -> PreparedDataset / the
loaders: the same arrays, masks and tokens back from either format; bad items
reported and skipped; re-runs skip work."""

import csv
import json
import os
import threading
import time

import numpy as np
import pytest

from data_pipelines import batch_plan
from data_pipelines import dataset as dataset_lib
from data_pipelines import features as F
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


def read_all(out, split, normalized=False):
  ds = dataset_lib.PreparedDataset(out)
  return {r["utt_id"]: ds.example(r, normalized) for r in ds.select(split)}


def test_bad_items_reported_and_skipped(corpus):
  rep = corpus["report"]
  assert rep["written"] == 12 and rep["skipped"] == 3
  sk = rep["skipped_items"]
  assert "unreadable" in sk["corrupt"] and "corrupt.wav" in sk["corrupt"]
  assert "empty transcript" in sk["notext"]
  assert "too short" in sk["tiny"]
  on_disk = json.load(open(os.path.join(corpus["out"], "report.json"), encoding="utf-8"))
  assert on_disk["skipped"] == 3 and on_disk["splits"] == {"train": 8, "test": 4}


def test_round_trip_gives_back_features_tokens_labels(corpus):
  out = corpus["out"]
  wp = WordPiece(max_tokens=64)
  ds = dataset_lib.PreparedDataset(out)
  got = {**read_all(out, "train"), **read_all(out, "test")}
  assert sorted(got) == [f"u{i:02d}" for i in range(12)]
  assert ds.classes() == ("calm", "excited")
  for i in range(12):
    g = got[f"u{i:02d}"]
    want = np.load(F.feature_path(os.path.join(out, "features"), f"u{i:02d}"))
    np.testing.assert_array_equal(g.features, want)  # float32 storage: raw values
    ids, _ = wp.encode(TEXTS[i % len(TEXTS)])
    np.testing.assert_array_equal(g.input_ids, ids)
    r = ds.by_id[f"u{i:02d}"]
    assert r["label"] == ["calm", "excited"][i % 2] and r["frames"] == len(want)
    assert r["num_tokens"] == len(ids)


def test_threads_reading_at_once_open_each_part_once(corpus, monkeypatch):
  """The loader's threads ask for shards at the same moment: one of them opens a
  part (importing TFDS) while the others wait, and all get the right examples.
  Opening in several threads at once deadlocked TFDS's lazy imports."""
  real, opened = dataset_lib.tf_compat.tfds, []

  def slow_tfds():  # widens the window in which a second opener would slip in
    opened.append(threading.get_ident())
    time.sleep(0.2)
    return real()

  monkeypatch.setattr(dataset_lib.tf_compat, "tfds", slow_tfds)
  ds = dataset_lib.PreparedDataset(corpus["out"])
  assert ds.format == "array_record"
  records = ds.select("train") + ds.select("test")
  start, got, errors = threading.Barrier(8), {}, []

  def read(k):
    try:
      start.wait()
      got[k] = {r["utt_id"]: ds.example(r, False).features for r in records}
    except Exception as e:  # noqa: BLE001 - reported below
      errors.append(e)

  threads = [threading.Thread(target=read, args=(k,)) for k in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=120)
  assert not errors and len(got) == 8, errors
  parts = {ds.index.part_of(int(r["row"])) for r in records}
  assert len(opened) == len(parts) > 1, (len(opened), parts)
  want = read_all(corpus["out"], "train") | read_all(corpus["out"], "test")
  for k in range(8):
    for uid, x in got[k].items():
      np.testing.assert_array_equal(x, want[uid].features)


def test_loader_pads_to_buckets_with_masks(corpus):
  out = corpus["out"]
  ds = dataset_lib.PreparedDataset(out)
  rows_of = ds.index.rows_of("train+test")
  ix = ds.index
  plan = batch_plan.BatchPlan(np.zeros(len(rows_of)), ix.bucket[rows_of], ix.buckets, 1, 3, seed=3,
                              max_frames=1000)
  loader = batch_plan.PairLoader(ds, rows_of, plan, rows=np.arange(3), max_frames=1000,
                                 max_tokens=64)
  seen = set()
  for step in range(plan.steps_per_epoch):
    pad, ids = plan.at(step)
    b = loader.load(step)
    assert b["features"].shape == (3, pad, 130)  # static bucket shapes only
    for row, i in enumerate(ids):
      ex = ds.example(int(rows_of[i]))
      n = len(ex.features)
      assert b["frame_mask"][row].sum() == n and b["frame_mask"][row, :n].all()
      np.testing.assert_allclose(b["features"][row, :n], ex.features, rtol=1e-6)
      assert not b["features"][row, n:].any()
      k = len(ex.input_ids)
      np.testing.assert_array_equal(b["input_ids"][row, :k], ex.input_ids)
      assert b["attention_mask"][row].sum() == k
      seen.add(ex.utt_id)
  assert len(seen) == 12  # 12 examples, batches of 3: one epoch sees every one


def test_tfrecord_and_array_record_hold_identical_examples(corpus, tmp_path):
  """The same corpus prepared in both formats: the same index, the same example at
  every row (features, tokens, ids), and shards cut the same way."""
  other = str(tmp_path / "tfrecord")
  prepare(read_manifest(str(corpus["root"] / "manifest.csv")), other,
          PrepareOptions(name="fixture", label_names=("calm", "excited"), feature_dtype="float32",
                         num_workers=1, progress=False, file_format="tfrecord"))
  a, t = dataset_lib.PreparedDataset(corpus["out"]), dataset_lib.PreparedDataset(other)
  assert (a.format, t.format) == ("array_record", "tfrecord")
  for col in ("frames", "split", "bucket", "shard", "position"):
    np.testing.assert_array_equal(getattr(a.index, col), getattr(t.index, col))
  for x, y in zip(a.index.all_tokens(), t.index.all_tokens()):
    np.testing.assert_array_equal(x, y)
  assert a.report["shard_lengths"] == t.report["shard_lengths"]
  assert all(n.endswith(tuple(f"-of-{len(v):05d}" for v in [a.report["shard_lengths"][p]]))
             for p in t.report["part_dirs"] for n in t.part_files(p))
  for row in range(len(a.index)):
    ea, et = a.example(row, normalized=False), t.example(row, normalized=False)
    assert ea.utt_id == et.utt_id and ea.row == et.row == row
    np.testing.assert_array_equal(ea.features, et.features)
    np.testing.assert_array_equal(ea.input_ids, et.input_ids)
    np.testing.assert_array_equal(ea.input_ids, a.index.tokens(row))


def test_normalisation_uses_train_stats(corpus):
  out = corpus["out"]
  ds = dataset_lib.PreparedDataset(out)
  train_x = np.concatenate([np.load(F.feature_path(os.path.join(out, "features"), f"u{i:02d}"))
                            for i in range(8)]).astype(np.float64)
  np.testing.assert_allclose(ds.mean, train_x.mean(0), rtol=1e-4, atol=1e-4)
  g = read_all(out, "test", normalized=True)["u09"]
  raw = np.load(F.feature_path(os.path.join(out, "features"), "u09"))
  np.testing.assert_allclose(g.features, (raw - ds.mean) / ds.std, rtol=1e-5, atol=1e-5)


def test_rerun_skips_finished_work(corpus):
  root, out = corpus["root"], corpus["out"]
  ds = dataset_lib.PreparedDataset(out)
  part = sorted(ds.report["part_dirs"])[0]
  info = os.path.join(ds.part_dir(part), "dataset_info.json")
  records = os.path.join(out, "records.jsonl")
  before = os.path.getmtime(info), os.path.getmtime(records)
  rep = prepare(read_manifest(str(root / "manifest.csv")), out,
                PrepareOptions(name="fixture", label_names=("calm", "excited"),
                               feature_dtype="float32", num_workers=1, progress=False))
  # The finished preparation's own report comes back; nothing is extracted or rewritten.
  assert rep["written"] == 12
  with open(os.path.join(out, "report.json"), encoding="utf-8") as f:
    assert rep == json.load(f)
  assert (os.path.getmtime(info), os.path.getmtime(records)) == before


def test_number_list_encoding_still_reads_and_bytes_halve_the_shards(corpus, tmp_path):
  """Datasets written with TFDS's number-list tensors (`tensor_encoding="none"`, as
  before the option) give the same examples as the raw-bytes default, which
  stores float16 features in 2 bytes a value instead of 4."""
  shards = {}
  for enc in ("none", "bytes"):
    out = str(tmp_path / enc)
    prepare(read_manifest(str(corpus["root"] / "manifest.csv")), out,
            PrepareOptions(name="fixture", label_names=("calm", "excited"),
                           feature_dtype="float16", num_workers=1, progress=False,
                           file_format="tfrecord", tensor_encoding=enc))
    ds = dataset_lib.PreparedDataset(out)
    assert ds.report["signature"]["options"]["tensor_encoding"] == enc
    shards[enc] = (ds, sum(os.path.getsize(os.path.join(ds.part_dir(p), n))
                           for p in ds.report["part_dirs"] for n in ds.part_files(p)))
  (old, old_bytes), (new, new_bytes) = shards["none"], shards["bytes"]
  for row in range(len(old.index)):
    eo, en = old.example(row, normalized=False), new.example(row, normalized=False)
    assert eo.utt_id == en.utt_id and eo.features.dtype == en.features.dtype
    np.testing.assert_array_equal(eo.features, en.features)
    np.testing.assert_array_equal(eo.input_ids, en.input_ids)
  # float16 as number lists costs 4 bytes a value (stored as float32), raw bytes 2
  assert new_bytes < 0.6 * old_bytes, (new_bytes, old_bytes)
