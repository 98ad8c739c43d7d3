"""RAVDESS speech: labels and actor from the file names.

Names are `MM-VV-EE-II-SS-RR-AA.ext`: modality, vocal channel, emotion, intensity,
statement, repetition, actor (odd = male). Emotions 01..08 = neutral, calm, happy,
sad, angry, fearful, disgust, surprised. Statement 01 = "Kids are talking by the
door.", 02 = "Dogs are sitting by the door."
"""

from __future__ import annotations

import glob
import os

from data_pipelines.records import Utterance

EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry",
            "06": "fearful", "07": "disgust", "08": "surprised"}
STATEMENTS = {"01": "Kids are talking by the door.", "02": "Dogs are sitting by the door."}
FIVE_CLASSES = ("neutral", "happy", "sad", "angry", "surprised")


def parse_name(path: str) -> dict:
  stem = os.path.splitext(os.path.basename(path))[0]
  parts = stem.split("-")
  if len(parts) != 7 or not all(p.isdigit() for p in parts):
    raise ValueError(f"{path}: not a RAVDESS file name (MM-VV-EE-II-SS-RR-AA)")
  _, _, emo, intensity, stmt, rep, actor = parts
  if emo not in EMOTIONS or stmt not in STATEMENTS:
    raise ValueError(f"{path}: unknown emotion {emo} or statement {stmt}")
  return {"emotion": EMOTIONS[emo], "intensity": intensity, "statement": stmt,
          "repetition": rep, "actor": int(actor)}


def read_ravdess(root: str, classes=FIVE_CLASSES) -> list[Utterance]:
  """All speech files under `root` (any depth; wav/flac), restricted to `classes`
  (None keeps all 8)."""
  files = sorted(glob.glob(os.path.join(root, "**", "*.wav"), recursive=True) +
                 glob.glob(os.path.join(root, "**", "*.flac"), recursive=True))
  if not files:
    raise FileNotFoundError(f"{root}: no RAVDESS .wav/.flac files found")
  out = []
  for f in files:
    try:
      info = parse_name(f)
    except ValueError:
      continue  # other files in the tree (e.g. not speech) are not ours
    if classes is not None and info["emotion"] not in classes:
      continue
    out.append(Utterance(
        utt_id=os.path.splitext(os.path.basename(f))[0], audio_path=f,
        text=STATEMENTS[info["statement"]], label=info["emotion"],
        speaker=f"actor{info['actor']:02d}", session=f"actor{info['actor']:02d}"))
  return out
