"""MELD: the official CSVs and a directory of clips.

CSV columns: Sr No., Utterance, Speaker, Emotion, Sentiment, Dialogue_ID,
Utterance_ID, ... Clips are named `dia{D}_utt{U}.{wav,mp4}` in the split's clip
directory (official names: train_splits, dev_splits_complete,
output_repeated_splits_test; a flat directory per split also works). mp4 clips are
decoded with ffmpeg at feature-extraction time.
"""

from __future__ import annotations

import csv
import os

from data_pipelines.records import Utterance

CLASSES = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")
SPLITS = {"train": ("train_sent_emo.csv", ("train_splits", "train")),
          "validation": ("dev_sent_emo.csv", ("dev_splits_complete", "dev_splits", "dev")),
          "test": ("test_sent_emo.csv", ("output_repeated_splits_test", "test_splits", "test"))}


def _find_clip(root, dirs, stem):
  for d in dirs:
    for ext in (".wav", ".flac", ".mp4"):
      p = os.path.join(root, d, stem + ext)
      if os.path.exists(p):
        return p
  return os.path.join(root, dirs[0], stem + ".mp4")  # reported missing later


def read_meld(root: str, csv_dir: str | None = None) -> list[Utterance]:
  csv_dir = csv_dir or root
  out = []
  for split, (csv_name, dirs) in SPLITS.items():
    path = os.path.join(csv_dir, csv_name)
    if not os.path.exists(path):
      raise FileNotFoundError(f"MELD CSV {path} not found")
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
      for row in csv.DictReader(f):
        emo = row["Emotion"].strip().lower()
        if emo not in CLASSES:
          raise ValueError(f"{path}: unknown emotion {emo!r} in row {row.get('Sr No.')}")
        d, u = row["Dialogue_ID"].strip(), row["Utterance_ID"].strip()
        stem = f"dia{d}_utt{u}"
        out.append(Utterance(utt_id=f"{split}_{stem}", audio_path=_find_clip(root, dirs, stem),
                             text=row["Utterance"], label=emo,
                             speaker=row["Speaker"].strip(), split=split,
                             session=f"{split}_dia{d}"))
  return out
