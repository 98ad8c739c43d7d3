"""Evaluation protocols: which utterances train, select and test each fold.

Every fold is speaker-disjoint: a speaker's utterances sit in exactly one of
train / validation / test. Records are plain dicts (as in a prepared dataset's
`records.jsonl`) with at least `utt_id`, `speaker`, `split`, `session`.

  * "split": the corpus's own train/validation/test split (MELD official, demo).
  * "speaker_kfold": speakers sorted (natural order) and cut into K consecutive
    groups; fold k tests on group k, selects on group k+1 (mod K) and trains on
    the rest. RAVDESS with K=6 gives the actor triples {1,2,3}, ..., {16,17,18}.
  * "leave_session_out": IEMOCAP's 10 folds: leave one session out, one of its two
    speakers validates and the other tests (both ways round).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

PROTOCOLS = ("split", "speaker_kfold", "leave_session_out")


@dataclasses.dataclass
class Fold:
  name: str
  train: list
  validation: list
  test: list

  def check(self) -> None:
    sets = [set(self.train), set(self.validation), set(self.test)]
    if not all(sets):
      empty = [n for n, s in zip(("train", "validation", "test"), sets) if not s]
      raise ValueError(f"fold {self.name}: empty {empty}")
    if sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2]:
      raise ValueError(f"fold {self.name}: an utterance is in two of train/validation/test")


def natural_key(s: str):
  """'actor2' < 'actor10' (numbers compared as numbers)."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def split_folds(records) -> list[Fold]:
  by = {"train": [], "validation": [], "test": []}
  for r in records:
    split = {"dev": "validation", "val": "validation"}.get(r["split"], r["split"])
    if split not in by:
      raise ValueError(f"{r['utt_id']}: unknown split {r['split']!r}")
    by[split].append(r["utt_id"])
  fold = Fold("official", by["train"], by["validation"], by["test"])
  fold.check()
  return [fold]


def speaker_groups(records, num_folds: int) -> list[list[str]]:
  speakers = sorted({r["speaker"] for r in records}, key=natural_key)
  if "" in speakers:
    raise ValueError("speaker_kfold needs a speaker for every utterance; "
                     f"{sum(not r['speaker'] for r in records)} have none")
  if len(speakers) < max(num_folds, 3):
    raise ValueError(f"{len(speakers)} speakers cannot make {num_folds} speaker-disjoint "
                     "folds with separate validation and test speakers")
  return [list(g) for g in np.array_split(np.array(speakers, dtype=object), num_folds)]


def speaker_kfold(records, num_folds: int) -> list[Fold]:
  groups = speaker_groups(records, num_folds)
  folds = []
  for k, test_g in enumerate(groups):
    val_g = groups[(k + 1) % num_folds]
    test_s, val_s = set(test_g), set(val_g)
    folds.append(Fold(
        name=f"fold{k + 1}_test_{test_g[0]}-{test_g[-1]}",
        train=[r["utt_id"] for r in records if r["speaker"] not in test_s | val_s],
        validation=[r["utt_id"] for r in records if r["speaker"] in val_s],
        test=[r["utt_id"] for r in records if r["speaker"] in test_s]))
    folds[-1].check()
  return folds


def leave_session_out(records) -> list[Fold]:
  folds = []
  for sess in sorted({r["session"] for r in records}, key=natural_key):
    speakers = sorted({r["speaker"] for r in records if r["session"] == sess})
    if len(speakers) != 2:
      raise ValueError(f"session {sess!r}: expected 2 speakers, found {speakers}")
    for val, test in ((speakers[0], speakers[1]), (speakers[1], speakers[0])):
      folds.append(Fold(
          name=f"{sess}_val-{val}_test-{test}",
          train=[r["utt_id"] for r in records if r["session"] != sess],
          validation=[r["utt_id"] for r in records if r["speaker"] == val],
          test=[r["utt_id"] for r in records if r["speaker"] == test]))
      folds[-1].check()
  return folds


def is_held_out(fold_name: str, holdout) -> bool:
  """Whether a fold is one of the held-out names, given whole or as a prefix
  (`fold6` names `fold6_test_actor16-actor18`)."""
  return any(fold_name == h or fold_name.startswith(h + "_") for h in holdout)


def make_folds(records, protocol: str, num_folds: int = 6) -> list[Fold]:
  if protocol == "split":
    return split_folds(records)
  if protocol == "speaker_kfold":
    return speaker_kfold(records, num_folds)
  if protocol == "leave_session_out":
    return leave_session_out(records)
  raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")


def subsample(utt_ids, labels: dict, fraction: float, seed: int) -> list:
  """A class-stratified `fraction` of the training utterances (Table 7); at least
  one per class."""
  if not 0 < fraction <= 1:
    raise ValueError(f"train fraction must be in (0, 1], got {fraction}")
  if fraction == 1:
    return list(utt_ids)
  rng = np.random.default_rng(seed)
  out = []
  for c in sorted({labels[u] for u in utt_ids}):
    ids = [u for u in utt_ids if labels[u] == c]
    n = max(1, int(round(len(ids) * fraction)))
    out += [ids[i] for i in sorted(rng.choice(len(ids), n, replace=False))]
  return out
