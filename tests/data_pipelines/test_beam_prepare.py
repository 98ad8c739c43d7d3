"""Preparation on Apache Beam (local runner): the same dataset as the process pool
(records, token ids, statistics, features to the last float16 bit, bad-item
report), straight to a URL, and resumable after a crash without repeating
finished extractions."""

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from data_pipelines import demo
from data_pipelines.adapters import read_manifest
from data_pipelines.dataset import PreparedDataset
from data_pipelines.prepare import PrepareOptions, prepare
from mced_jax.layout import Layout
from mced_jax.runtime import fs
from tests.data_pipelines.fixtures import write_corrupt, write_wav

pytest.importorskip("apache_beam")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPTS = dict(name="demo", progress=False, filter_pairs=True, file_format="tfrecord",
            num_shards=2, frame_buckets=(400,), max_frames=400)


def same_dataset(a_dir: str, b_dir: str) -> None:
  a, b = PreparedDataset(a_dir), PreparedDataset(b_dir)
  assert a.records == b.records
  np.testing.assert_array_equal(a.mean, b.mean)
  np.testing.assert_array_equal(a.std, b.std)
  assert a.speaker_stats.keys() == b.speaker_stats.keys()
  for x, y in zip(a.index.all_tokens(), b.index.all_tokens()):
    np.testing.assert_array_equal(x, y)
  for row in range(len(a.index)):
    ea, eb = a.example(row, normalized=False), b.example(row, normalized=False)
    assert ea.utt_id == eb.utt_id
    np.testing.assert_array_equal(ea.features, eb.features)
  assert a.report["skipped_items"] == b.report["skipped_items"]


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
  """The demo corpus, and a manifest corpus with bad files of every kind."""
  root = tmp_path_factory.mktemp("beam")
  rows = []
  for i in range(8):
    write_wav(str(root / "clips" / f"u{i}.wav"), 1.6 + 0.3 * i, seed=i, f0=100 + 15 * i)
    rows.append({"audio": f"clips/u{i}.wav", "text": f"sentence number {i} has several words",
                 "speaker": f"spk{i % 3}", "split": "train" if i < 6 else "test"})
  write_corrupt(str(root / "clips" / "corrupt.wav"))
  write_wav(str(root / "clips" / "short.wav"), 1.0, seed=20)  # under the 1.5-s pair filter
  write_wav(str(root / "clips" / "tiny.wav"), 0.2, seed=21)  # too short to extract
  write_wav(str(root / "clips" / "oneword.wav"), 2.0, seed=22)
  write_wav(str(root / "clips" / "notext.wav"), 2.0, seed=23)
  rows += [{"audio": "clips/corrupt.wav", "text": "this file is broken", "speaker": "spk0",
            "split": "train"},
           {"audio": "clips/short.wav", "text": "a short clip here", "speaker": "spk1",
            "split": "train"},
           {"audio": "clips/tiny.wav", "text": "tiny tiny clip", "speaker": "spk1",
            "split": "train"},
           {"audio": "clips/oneword.wav", "text": "word", "speaker": "spk2", "split": "train"},
           {"audio": "clips/notext.wav", "text": "   ", "speaker": "spk2", "split": "train"}]
  with open(root / "bad.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  return {"root": root, "bad": str(root / "bad.csv"),
          "demo": demo.generate(str(root / "demo"), per_class_per_voice=1, progress=False)}


@pytest.mark.parametrize("corpus,normalize", [("demo", "global"), ("bad", "speaker")])
def test_beam_and_the_process_pool_prepare_the_same_dataset(manifests, tmp_path, corpus,
                                                            normalize):
  recs = lambda: read_manifest(manifests[corpus])
  pool = prepare(recs(), str(tmp_path / "pool"), PrepareOptions(
      engine="pool", num_workers=2, normalize=normalize, **OPTS))
  beam = prepare(recs(), str(tmp_path / "beam"), PrepareOptions(
      engine="beam", num_workers=2, normalize=normalize, **OPTS))
  assert beam["engine"] == "beam" and beam["extracted"] == beam["written"] + len(
      [v for v in beam["skipped_items"].values() if "pair filter" in v])
  same_dataset(str(tmp_path / "pool"), str(tmp_path / "beam"))
  if corpus == "bad":
    why = beam["skipped_items"]
    assert "unreadable" in why["corrupt"] and "pair filter: 1.00 s < 1.5 s" in why["short"]
    assert "too short" in why["tiny"] and "fewer than 2 words" in why["oneword"]
    assert "empty transcript" in why["notext"] and len(why) == 5


def test_beam_prepares_straight_to_a_url_and_distillation_reads_it(manifests, tiny_config,
                                                                   tmp_path, monkeypatch):
  from mced_jax.train import distill
  monkeypatch.chdir(tmp_path)  # any local path created would land here
  url = "memory://beam_url/prepared"
  # one worker: the in-memory runner (memory:// lives in this process only)
  rep = prepare(read_manifest(manifests["demo"]), url, PrepareOptions(
      engine="beam", num_workers=1, **OPTS))
  cached = [n for n in fs.listdir(fs.join(url, "features")) if n.endswith(".json")]
  assert rep["written"] == 30 and len(cached) == 30  # the cache lives beside the output
  with tiny_config.unlocked():
    tiny_config.teacher.vocab_size = 30522
    tiny_config.data.source, tiny_config.data.path = "prepared", url
    tiny_config.data.split, tiny_config.data.max_frames = "train+validation+test", 400
    tiny_config.data.max_tokens = 24
    tiny_config.distill.batch_size, tiny_config.distill.num_steps = 4, 2
  res = distill.train(tiny_config, Layout("memory://beam_url/run"))
  assert res.status == "done" and int(res.state.step) == 2
  assert not os.listdir(tmp_path), os.listdir(tmp_path)


PREPARE = r"""
import sys
from data_pipelines.adapters import read_manifest
from data_pipelines.prepare import PrepareOptions, prepare
prepare(read_manifest(sys.argv[1]), sys.argv[2], PrepareOptions(
    name="demo", progress=False, filter_pairs=True, file_format="tfrecord", num_shards=2,
    frame_buckets=(400,), max_frames=400, engine="beam", num_workers=1))
"""


def test_a_killed_preparation_resumes_without_repeating_finished_extractions(manifests,
                                                                            tmp_path):
  """SIGKILL after some utterances are extracted; the re-run extracts only the rest
  and the dataset equals an uninterrupted preparation's (nothing lost or doubled)."""
  out, cache = str(tmp_path / "resumed"), str(tmp_path / "resumed" / "features")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  p = subprocess.Popen([sys.executable, "-c", PREPARE, manifests["demo"], out], cwd=ROOT,
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  done = lambda: len([n for n in os.listdir(cache) if n.endswith(".json")]) if os.path.isdir(
      cache) else 0
  deadline = time.time() + 300
  while done() < 8 and p.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  p.send_signal(signal.SIGKILL)
  p.wait()
  finished = done()
  assert 8 <= finished < 30, finished
  assert not os.path.exists(os.path.join(out, "report.json"))  # it really stopped mid-way
  rep = prepare(read_manifest(manifests["demo"]), out, PrepareOptions(
      engine="beam", num_workers=1, **OPTS))
  assert rep["cached"] == finished and rep["extracted"] == 30 - finished
  fresh = prepare(read_manifest(manifests["demo"]), str(tmp_path / "fresh"), PrepareOptions(
      engine="pool", num_workers=1, **OPTS))
  assert fresh["extracted"] == 30 and rep["written"] == fresh["written"] == 30
  same_dataset(str(tmp_path / "fresh"), out)
