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


def test_flat_prosody_control_changes_only_the_prosody(tmp_path):
  """The flat corpus has the same ids, texts, labels, voices and splits, every
  class spoken with the neutral preset: neutral clips are byte-identical to the
  class-prosody corpus, the other classes' clips are not, and sad speech is no
  longer slower than angry speech."""
  cls, flat = demo.jobs(2, prosody="class"), demo.jobs(2, prosody="flat")
  same = ("id", "text", "label", "speaker", "split", "voice")
  assert [{k: j[k] for k in same} for j in cls] == [{k: j[k] for k in same} for j in flat]
  knobs = ("rate", "pitch", "range", "volume")
  for a, b in zip(cls, flat):
    if a["label"] == "neutral":
      assert all(a[k] == b[k] for k in knobs)
    else:
      assert any(a[k] != b[k] for k in knobs)
  for j in flat:  # every class within the neutral preset's jitter
    assert abs(j["rate"] - demo.PROSODY["neutral"]["rate"]) < 40
    assert j["volume"] == demo.PROSODY["neutral"]["volume"]
  ma = demo.generate(str(tmp_path / "class"), per_class_per_voice=1, progress=False)
  mb = demo.generate(str(tmp_path / "flat"), per_class_per_voice=1, progress=False,
                     prosody="flat")
  ra = list(csv.DictReader(open(ma, encoding="utf-8")))
  assert ra == list(csv.DictReader(open(mb, encoding="utf-8")))  # same manifest rows
  dur = {}
  for r in ra:
    a = open(os.path.join(tmp_path / "class", r["audio"]), "rb").read()
    b = open(os.path.join(tmp_path / "flat", r["audio"]), "rb").read()
    assert (a == b) == (r["label"] == "neutral"), r["id"]
    x, sr = sf.read(os.path.join(tmp_path / "flat", r["audio"]))
    dur.setdefault(r["label"], []).append(x.size / sr)
  assert np.mean(dur["sadness"]) < 1.15 * np.mean(dur["anger"])
