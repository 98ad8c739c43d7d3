"""Fold builders: speaker-disjoint, complete, the exact RAVDESS / IEMOCAP layouts."""

import collections

import pytest

from mced_jax.evaluation import protocols


def _records(speakers, per_speaker=4, session_of=None):
  out = []
  for s in speakers:
    for i in range(per_speaker):
      out.append({"utt_id": f"{s}_{i}", "speaker": s, "label": "abcd"[i % 4],
                  "split": "train", "session": session_of(s) if session_of else ""})
  return out


def _speakers(records, ids):
  by_id = {r["utt_id"]: r["speaker"] for r in records}
  return {by_id[u] for u in ids}


def test_ravdess_six_folds_of_consecutive_actor_triples():
  # actor names sort naturally: actor2 < actor10 (here zero-padded like the adapter)
  recs = _records([f"actor{i:02d}" for i in range(18, 0, -1)])
  folds = protocols.make_folds(recs, "speaker_kfold", 6)
  assert len(folds) == 6
  expected = [{f"actor{3 * k + j:02d}" for j in (1, 2, 3)} for k in range(6)]
  tested = collections.Counter()
  for k, f in enumerate(folds):
    tr, va, te = (_speakers(recs, x) for x in (f.train, f.validation, f.test))
    assert te == expected[k]
    assert va == expected[(k + 1) % 6]  # the next triple selects the model
    assert not (tr & va or tr & te or va & te)  # speaker-disjoint
    assert len(f.train) + len(f.validation) + len(f.test) == len(recs)  # complete
    tested.update(f.test)
  assert set(tested) == {r["utt_id"] for r in recs} and set(tested.values()) == {1}


def test_natural_order_of_unpadded_speaker_names():
  recs = _records([f"spk{i}" for i in range(1, 13)])
  folds = protocols.speaker_kfold(recs, 4)
  assert _speakers(recs, folds[0].test) == {"spk1", "spk2", "spk3"}
  assert _speakers(recs, folds[3].test) == {"spk10", "spk11", "spk12"}


def test_iemocap_leave_one_session_out():
  spk = [f"Ses0{s}{g}" for s in range(1, 6) for g in "FM"]
  recs = _records(spk, session_of=lambda s: s[:5])
  folds = protocols.make_folds(recs, "leave_session_out")
  assert len(folds) == 10
  for f in folds:
    va, te, tr = (_speakers(recs, x) for x in (f.validation, f.test, f.train))
    assert len(va) == len(te) == 1 and va != te
    (v,), (t,) = va, te
    assert v[:5] == t[:5]  # the two speakers of the held-out session
    assert not any(s[:5] == v[:5] for s in tr)
  # every speaker tests once (and validates once)
  assert collections.Counter(u for f in folds for u in f.test) == {r["utt_id"]: 1 for r in recs}


def test_official_split_and_errors():
  recs = _records(["a", "b", "c"])
  for r, split in zip(recs, ["train"] * 4 + ["dev"] * 4 + ["test"] * 4):
    r["split"] = split
  (fold,) = protocols.make_folds(recs, "split")
  assert len(fold.train) == len(fold.validation) == len(fold.test) == 4
  with pytest.raises(ValueError, match="empty"):
    protocols.make_folds(recs[:8], "split")
  with pytest.raises(ValueError, match="speakers cannot make"):
    protocols.speaker_kfold(_records(["a", "b"]), 6)
  with pytest.raises(ValueError, match="unknown protocol"):
    protocols.make_folds(recs, "bogus")


def test_stratified_subsample():
  labels = {f"u{i}": i % 5 for i in range(100)}
  ids = protocols.subsample(list(labels), labels, 1 / 5, seed=0)
  assert len(ids) == 20
  assert collections.Counter(labels[u] for u in ids) == {c: 4 for c in range(5)}
  assert ids == protocols.subsample(list(labels), labels, 1 / 5, seed=0)  # seeded
  assert protocols.subsample(list(labels), labels, 1.0, seed=0) == list(labels)
