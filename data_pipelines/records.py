"""The common utterance record every corpus adapter produces."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Utterance:
  utt_id: str  # unique within the corpus; also the TFDS example key
  audio_path: str
  text: str = ""
  label: str | None = None  # class name, or None for unlabelled pairs
  speaker: str = ""
  split: str = "train"
  session: str = ""  # recording session / group (IEMOCAP folds, MELD dialogue)


def by_split(records) -> dict[str, list[Utterance]]:
  out: dict[str, list[Utterance]] = {}
  for r in records:
    out.setdefault(r.split, []).append(r)
  return out


def speaker_key(speaker: str, utt_id: str) -> str:
  """Per-speaker statistics group of an utterance: its speaker, or itself when the
  corpus names none (a speaker of one utterance)."""
  return speaker if speaker else f"utt:{utt_id}"
