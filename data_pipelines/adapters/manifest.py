"""Generic manifest: CSV (header row) or JSONL with columns
`audio` (path, absolute or relative to the manifest), `text`, and optional `label`,
`speaker`, `split` (default train), `id` (default: the audio file's stem)."""

from __future__ import annotations

import csv
import json
import os

from data_pipelines.records import Utterance


def read_manifest(path: str) -> list[Utterance]:
  if not os.path.exists(path):
    raise FileNotFoundError(f"manifest {path} not found")
  base = os.path.dirname(os.path.abspath(path))
  if path.endswith(".jsonl"):
    with open(path, encoding="utf-8") as f:
      rows = []
      for i, line in enumerate(f, 1):
        if line.strip():
          try:
            rows.append(json.loads(line))
          except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not valid JSON ({e})") from e
  else:
    with open(path, encoding="utf-8", newline="") as f:
      rows = list(csv.DictReader(f))
  if not rows:
    raise ValueError(f"manifest {path} has no rows")
  if "audio" not in rows[0]:
    raise ValueError(f"manifest {path} needs an 'audio' column; it has {sorted(rows[0])}")
  out, seen = [], set()
  for i, row in enumerate(rows, 1):
    audio = (row.get("audio") or "").strip()
    if not audio:
      raise ValueError(f"{path}: row {i} has an empty 'audio' field")
    audio = audio if os.path.isabs(audio) else os.path.join(base, audio)
    utt_id = (row.get("id") or os.path.splitext(os.path.basename(audio))[0]).strip()
    if utt_id in seen:
      raise ValueError(f"{path}: row {i}: duplicate id {utt_id!r}")
    seen.add(utt_id)
    label = row.get("label")
    out.append(Utterance(utt_id=utt_id, audio_path=audio, text=row.get("text") or "",
                         label=label if label not in ("", None) else None,
                         speaker=str(row.get("speaker") or ""),
                         split=(row.get("split") or "train").strip()))
  return out
