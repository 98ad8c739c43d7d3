"""The corpus registry: name -> adapter, classes, role, default protocol.

One table answers, for every corpus the project knows: how to read its layout
(an adapter returning `Utterance` records), which classes it has (None: take the
labels found; (): unlabelled pairs), whether it is a distillation pair corpus (the
paper's pair filter applies), whether it is licensed (read from the user's
manual_dir), and how the paper evaluates on it (protocol, selection metric).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from data_pipelines.adapters.iemocap import CLASSES as IEMOCAP_CLASSES, read_iemocap
from data_pipelines.adapters.ljspeech import read_ljspeech
from data_pipelines.adapters.manifest import read_manifest
from data_pipelines.adapters.meld import CLASSES as MELD_CLASSES, read_meld
from data_pipelines.adapters.ravdess import FIVE_CLASSES as RAVDESS_CLASSES, read_ravdess
from data_pipelines.demo import CLASSES as DEMO_CLASSES


@dataclasses.dataclass(frozen=True)
class Corpus:
  name: str
  read: Callable  # root -> list[Utterance]
  classes: tuple | None  # None: the labels found in the data; (): unlabelled
  pairs: bool  # unlabelled audio/transcript pairs: the pair filter applies
  protocol: str = "split"  # default evaluation protocol (mced_jax.evaluation.protocols)
  num_folds: int = 0
  select_metric: str = "UAR"
  licensed: bool = False  # the user places it; its root is TFDS's manual_dir


CORPORA = {
    "demo": Corpus("demo", read_manifest, DEMO_CLASSES, pairs=True),
    "manifest": Corpus("manifest", read_manifest, None, pairs=True),
    "ljspeech": Corpus("ljspeech", read_ljspeech, (), pairs=True),
    "ravdess": Corpus("ravdess", read_ravdess, RAVDESS_CLASSES, pairs=False,
                      protocol="speaker_kfold", num_folds=6),
    "iemocap": Corpus("iemocap", read_iemocap, IEMOCAP_CLASSES, pairs=False,
                      protocol="leave_session_out", licensed=True),
    "meld": Corpus("meld", read_meld, MELD_CLASSES, pairs=False, select_metric="WF1",
                   licensed=True),
}


def get(name: str) -> Corpus:
  if name not in CORPORA:
    raise ValueError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)}")
  return CORPORA[name]


def parse_extra(spec: str) -> list[tuple[Corpus, str]]:
  """'adapter:root,adapter:root' -> [(corpus, root)] (extra pair corpora)."""
  out = []
  for item in (x.strip() for x in spec.split(",") if x.strip()):
    name, _, root = item.partition(":")
    if name not in CORPORA or not root:
      raise ValueError(f"extra corpus entry {item!r}: expected name:root with a name of "
                       f"{', '.join(CORPORA)}")
    out.append((CORPORA[name], root))
  return out
