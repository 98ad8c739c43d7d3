"""LJSpeech-style pairs: `metadata.csv` lines `id|text|normalized text` and audio in
`wavs/<id>.wav` (or .flac). Unlabelled: distillation pairs."""

from __future__ import annotations

import os

from data_pipelines.records import Utterance


def read_ljspeech(root: str, speaker: str = "LJ") -> list[Utterance]:
  meta = os.path.join(root, "metadata.csv")
  if not os.path.exists(meta):
    raise FileNotFoundError(f"{root}: no metadata.csv (LJSpeech layout expected)")
  out = []
  with open(meta, encoding="utf-8") as f:
    for i, line in enumerate(f, 1):
      line = line.rstrip("\n")
      if not line:
        continue
      parts = line.split("|")
      if len(parts) < 2:
        raise ValueError(f"{meta}:{i}: expected 'id|text|normalized', got {line[:80]!r}")
      utt_id = parts[0]
      text = parts[2] if len(parts) > 2 and parts[2] else parts[1]
      audio = os.path.join(root, "wavs", utt_id + ".wav")
      if not os.path.exists(audio) and os.path.exists(audio[:-4] + ".flac"):
        audio = audio[:-4] + ".flac"
      out.append(Utterance(utt_id=utt_id, audio_path=audio, text=text, speaker=speaker))
  return out
