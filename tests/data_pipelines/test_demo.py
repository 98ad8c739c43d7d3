"""The espeak-ng demo corpus."""

import csv
import os

import numpy as np
import soundfile as sf

from data_pipelines import demo


def test_demo_corpus_is_deterministic_labelled_and_prosodic(tmp_path):
  m = demo.generate(str(tmp_path / "a"), per_class_per_voice=1, progress=False)
  rows = list(csv.DictReader(open(m, encoding="utf-8")))
  assert len(rows) == len(demo.CLASSES) * len(demo.VOICES)
  assert {r["label"] for r in rows} == set(demo.CLASSES)
  assert {r["split"] for r in rows} == {"train", "validation", "test"}
  dur = {}
  for r in rows:
    x, sr = sf.read(os.path.join(tmp_path / "a", r["audio"]))
    assert sr == 22050 and x.size / sr > 1.0 and np.abs(x).max() > 0.01
    dur.setdefault(r["label"], []).append(x.size / sr)
  # the prosody presets are audible: sad speech is slower than angry speech
  assert np.mean(dur["sadness"]) > 1.3 * np.mean(dur["anger"])
  # deterministic: a second corpus is byte-identical
  m2 = demo.generate(str(tmp_path / "b"), per_class_per_voice=1, progress=False)
  for r in rows:
    a = open(os.path.join(tmp_path / "a", r["audio"]), "rb").read()
    b = open(os.path.join(os.path.dirname(m2), r["audio"]), "rb").read()
    assert a == b
