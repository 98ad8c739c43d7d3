"""Corpus adapters on fixtures written in each corpus's official layout, and on the
shared real data where present."""

import csv
import json
import os

import pytest

from data_pipelines.adapters import (read_iemocap, read_ljspeech, read_manifest, read_meld,
                                     read_ravdess)
from data_pipelines.adapters import ravdess as ravdess_lib
from data_pipelines.adapters import text as text_lib
from tests.data_pipelines.fixtures import write_wav
from mced_jax.evaluation import protocols
from tests.conftest import SHARED_DATA, require_shared_data

IEMOCAP_EMOS = ["neu", "hap", "exc", "ang", "sad", "fru", "xxx"]


def make_iemocap(root):
  """2 utterances of each of 7 labels per speaker, 5 sessions x 2 speakers."""
  for s in range(1, 6):
    sess = root / f"Session{s}"
    dialog = f"Ses0{s}F_impro01"
    evals, trans = [], []
    for i, emo in enumerate(IEMOCAP_EMOS * 2):
      for spk in "FM":
        utt = f"{dialog}_{spk}{i:03d}"
        evals.append(f"[{i}.0000 - {i}.9000]\t{utt}\t{emo}\t[2.5000, 2.5000, 2.5000]")
        trans.append(f"{utt} [{i:03d}.0000-{i:03d}.9000]: line {i} of {spk}.")
        wav = sess / "sentences" / "wav" / dialog / f"{utt}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        wav.write_bytes(b"")  # the adapter does not read audio
    for sub, lines in (("EmoEvaluation", ["% header", ""] + evals), ("transcriptions", trans)):
      d = sess / "dialog" / sub
      d.mkdir(parents=True, exist_ok=True)
      (d / f"{dialog}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_iemocap_labels_speakers_and_ten_folds(tmp_path):
  make_iemocap(tmp_path)
  recs = read_iemocap(str(tmp_path))
  # fru/xxx dropped; exc merged into happy: per speaker 2x(neu, hap, exc, ang, sad)
  assert len(recs) == 5 * 2 * 10
  counts = {c: sum(r.label == c for r in recs) for c in ("neutral", "happy", "angry", "sad")}
  assert counts == {"neutral": 20, "happy": 40, "angry": 20, "sad": 20}
  r = next(x for x in recs if x.utt_id == "Ses03F_impro01_M004")
  assert r.speaker == "Ses03_M" and r.session == "Session3" and r.text == "line 4 of M."
  assert r.audio_path.endswith("Session3/sentences/wav/Ses03F_impro01/Ses03F_impro01_M004.wav")
  folds = protocols.make_folds([vars(r) for r in recs], "leave_session_out")
  assert len(folds) == 10
  all_ids = {x.utt_id for x in recs}
  spk = {x.utt_id: x.speaker for x in recs}
  for f in folds:
    tr, va, te = set(f.train), set(f.validation), set(f.test)
    assert tr | va | te == all_ids and not (tr & va or tr & te or va & te)
    assert len({spk[u] for u in va}) == 1 and len({spk[u] for u in te}) == 1
    assert not {spk[u] for u in tr} & {spk[u] for u in va | te}
  # every speaker is the test speaker of exactly one fold
  assert sorted(spk[f.test[0]] for f in folds) == sorted(set(spk.values()))


MELD_HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID",
               "Utterance_ID", "Season", "Episode", "StartTime", "EndTime"]
MELD_LAYOUT = (("train_sent_emo.csv", "train_splits"), ("dev_sent_emo.csv", "dev_splits_complete"),
               ("test_sent_emo.csv", "output_repeated_splits_test"))


def write_meld_csvs(root, rows):
  """The three official MELD CSVs, each holding `rows`; returns the clip folders."""
  for name, _ in MELD_LAYOUT:
    with open(root / name, "w", newline="", encoding="utf-8") as f:
      w = csv.writer(f)
      w.writerow(MELD_HEADER)
      w.writerows(rows)
  return [d for _, d in MELD_LAYOUT]


def test_meld_reads_official_csvs_and_finds_clips(tmp_path):
  for d in write_meld_csvs(tmp_path, [
      [1, "Oh my God\x92s sake!", "Ross", "surprise", "positive", 0, 0, 1, 1, "", ""],
      [2, "Fine.", "Monica", "neutral", "neutral", 0, 1, 1, 1, "", ""]]):
    write_wav(str(tmp_path / d / "dia0_utt0.wav"), 1.0)
  recs = read_meld(str(tmp_path))
  assert len(recs) == 6
  assert {r.split for r in recs} == {"train", "validation", "test"}
  r = recs[0]
  assert r.utt_id == "train_dia0_utt0" and r.label == "surprise" and r.speaker == "Ross"
  assert r.audio_path.endswith("train_splits/dia0_utt0.wav")
  assert recs[1].audio_path.endswith("dia0_utt1.mp4")  # missing: reported at extraction


def test_meld_mp4_without_ffmpeg_is_a_clear_error(tmp_path, monkeypatch):
  from data_pipelines import features
  import shutil
  p = tmp_path / "dia1_utt1.mp4"
  p.write_bytes(b"\x00\x00\x00\x18ftypmp42")
  monkeypatch.setattr(shutil, "which", lambda name: None)
  with pytest.raises(features.BadAudio, match="needs ffmpeg"):
    features.load_audio(str(p))


def test_ravdess_names():
  info = ravdess_lib.parse_name("Actor_07/03-01-05-02-02-01-07.wav")
  assert info == {"emotion": "angry", "intensity": "02", "statement": "02", "repetition": "01",
                  "actor": 7}
  with pytest.raises(ValueError, match="not a RAVDESS file name"):
    ravdess_lib.parse_name("hello.wav")


def test_manifest_csv_jsonl_and_errors(tmp_path):
  write_wav(str(tmp_path / "a.wav"), 1.0)
  (tmp_path / "m.csv").write_text("audio,text,label\na.wav,hello there,happy\n", encoding="utf-8")
  r = read_manifest(str(tmp_path / "m.csv"))[0]
  assert r.audio_path == str(tmp_path / "a.wav") and r.label == "happy" and r.utt_id == "a"
  (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "a.wav", "text": "x", "id": "k"}) + "\n",
                                    encoding="utf-8")
  r = read_manifest(str(tmp_path / "m.jsonl"))[0]
  assert r.utt_id == "k" and r.label is None and r.split == "train"
  (tmp_path / "bad.csv").write_text("path,text\na.wav,x\n", encoding="utf-8")
  with pytest.raises(ValueError, match="needs an 'audio' column"):
    read_manifest(str(tmp_path / "bad.csv"))
  (tmp_path / "empty.csv").write_text("audio,text\n", encoding="utf-8")
  with pytest.raises(ValueError, match="has no rows"):
    read_manifest(str(tmp_path / "empty.csv"))
  (tmp_path / "bad.jsonl").write_text("{not json\n", encoding="utf-8")
  with pytest.raises(ValueError, match="bad.jsonl:1: not valid JSON"):
    read_manifest(str(tmp_path / "bad.jsonl"))


def test_shared_ravdess_and_ljspeech():
  require_shared_data()
  recs = read_ravdess(os.path.join(SHARED_DATA, "audio", "ravdess_5class"))
  assert len(recs) == 648 and len({r.speaker for r in recs}) == 18
  counts = {c: sum(r.label == c for r in recs) for c in ravdess_lib.FIVE_CLASSES}
  assert counts == {"neutral": 72, "happy": 144, "sad": 144, "angry": 144, "surprised": 144}
  lj = read_ljspeech(os.path.join(SHARED_DATA, "audio", "ljspeech_32"))
  assert len(lj) == 32 and all(os.path.exists(r.audio_path) for r in lj)


def test_teacher_text_dataset_matches_table1_train_counts():
  require_shared_data()
  text_dir = os.path.join(SHARED_DATA, "text")
  data = text_lib.teacher_text_dataset(os.path.join(text_dir, "xed"),
                                       os.path.join(text_dir, "emotionlines_friends"))
  counts = text_lib.class_counts(data)
  print("\n" + text_lib.counts_table(data))
  for c, paper in text_lib.PAPER_TABLE1["train"].items():
    assert abs(counts["train"][c] - paper) / paper <= 0.10, (c, counts["train"][c], paper)
  # XED texts never appear in two splits.
  xed = text_lib.read_xed(os.path.join(text_dir, "xed"))
  texts = {s: {t for t, _ in rows} for s, rows in xed.items()}
  assert not texts["train"] & texts["test"] and not texts["train"] & texts["validation"]


def test_mlm_lines_are_cleaned_and_deduplicated(tmp_path):
  a = tmp_path / "a.txt"
  a.write_text("Hello there.\n\nI don\x92t know.\nHello there.\n  one  \n", encoding="utf-8")
  b = tmp_path / "b.txt"
  b.write_text("I don't know.\nA new line here\n", encoding="utf-8")
  assert text_lib.read_lines([str(a), str(b)]) == ["Hello there.", "I don't know.", "one",
                                                   "A new line here"]
  assert text_lib.read_lines([str(a)], min_words=2) == ["Hello there.", "I don't know."]


def test_meld_fixture_prepares_through_manual_dir(tmp_path):
  """A licensed corpus goes through TFDS's manual_dir: clips missing on disk are
  reported, the rest is written with labels."""
  from data_pipelines.prepare import PrepareOptions, prepare
  from data_pipelines.adapters import meld as meld_lib
  rows = [[u, f"utterance number {u} is here", "Joey", emo, "x", 3, u, 1, 1, "", ""]
          for u, emo in enumerate(["joy", "anger", "neutral"])]
  for d in write_meld_csvs(tmp_path, rows):
    for u in range(2):  # the third clip is missing
      write_wav(str(tmp_path / d / f"dia3_utt{u}.wav"), 1.0 + u, seed=u)
  rep = prepare(read_meld(str(tmp_path)), str(tmp_path / "out"),
                PrepareOptions(name="meld", label_names=meld_lib.CLASSES, num_workers=1,
                               progress=False, manual_dir=str(tmp_path)))
  assert rep["written"] == 6 and rep["skipped"] == 3
  assert all("not found" in why for why in rep["skipped_items"].values())
  assert rep["labels"]["joy"] == 3 and rep["labels"]["anger"] == 3
