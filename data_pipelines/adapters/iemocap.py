"""IEMOCAP (the `IEMOCAP_full_release` layout), 4 classes, the paper's 10 folds.

  SessionN/sentences/wav/<dialog>/<utt>.wav
  SessionN/dialog/EmoEvaluation/<dialog>.txt   lines "[start - end]\\t<utt>\\t<emo>\\t[v, a, d]"
  SessionN/dialog/transcriptions/<dialog>.txt  lines "<utt> [start-end]: text"

Classes: neutral, happy (happy + excited merged, the usual 4-class protocol), angry,
sad. The speaker of `Ses01F_impro01_M003` is `Ses01_M` (the letter after the last
underscore says who speaks).
"""

from __future__ import annotations

import glob
import os
import re

from data_pipelines.records import Utterance

LABELS = {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}
CLASSES = ("neutral", "happy", "angry", "sad")
_EVAL = re.compile(r"^\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(\S+)\s+(\S+)\s+\[")
_TRANS = re.compile(r"^(\S+)\s+\[[^\]]*\]:\s?(.*)$")


def speaker_of(utt_id: str) -> str:
  session = utt_id[:5]
  return f"{session}_{utt_id.rsplit('_', 1)[1][0]}"


def read_iemocap(root: str) -> list[Utterance]:
  sessions = sorted(glob.glob(os.path.join(root, "Session[1-5]")))
  if not sessions:
    raise FileNotFoundError(f"{root}: no Session1..5 directories (IEMOCAP_full_release "
                            "layout expected)")
  out = []
  for sdir in sessions:
    sess = os.path.basename(sdir)
    labels, texts = {}, {}
    for f in glob.glob(os.path.join(sdir, "dialog", "EmoEvaluation", "*.txt")):
      with open(f, encoding="utf-8", errors="replace") as fh:
        for line in fh:
          m = _EVAL.match(line)
          if m:
            labels[m.group(1)] = m.group(2)
    for f in glob.glob(os.path.join(sdir, "dialog", "transcriptions", "*.txt")):
      with open(f, encoding="utf-8", errors="replace") as fh:
        for line in fh:
          m = _TRANS.match(line.strip())
          if m:
            texts[m.group(1)] = m.group(2)
    for utt, emo in sorted(labels.items()):
      if emo not in LABELS:
        continue
      dialog = utt.rsplit("_", 1)[0]
      wav = os.path.join(sdir, "sentences", "wav", dialog, utt + ".wav")
      out.append(Utterance(utt_id=utt, audio_path=wav, text=texts.get(utt, ""),
                           label=LABELS[emo], speaker=speaker_of(utt), session=sess))
  if not out:
    raise ValueError(f"{root}: found no labelled utterances of the 4 classes")
  return out
