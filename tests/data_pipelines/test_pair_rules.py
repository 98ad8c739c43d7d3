"""The long-utterance rule and per-speaker standardisation of prepared pairs."""

import dataclasses
import json
import os

import numpy as np
import pytest

from data_pipelines import features as feat_lib
from data_pipelines.dataset import PreparedDataset
from data_pipelines.prepare import PrepareOptions, prepare
from data_pipelines.records import Utterance
from tests.data_pipelines.fixtures import write_wav

SPEAKERS = {"a": 110.0, "b": 180.0, "c": 240.0}  # f0 per speaker: different statistics


def _records(root, b_seed=0, labels=("x", "y")):
  recs = []
  for spk, f0 in SPEAKERS.items():
    for i, seconds in enumerate((2.0, 3.0)):
      seed = (b_seed if spk == "b" else 0) * 100 + i
      path = write_wav(os.path.join(root, f"{spk}{i}_{seed}.wav"), seconds, f0=f0, seed=seed)
      recs.append(Utterance(utt_id=f"{spk}{i}", audio_path=path, text="two words here",
                            label=labels[i % len(labels)], speaker=spk))
  return recs


def test_long_utterance_rule_drops_and_counts(tmp_path):
  recs = _records(str(tmp_path / "audio"))
  recs.append(Utterance(utt_id="long", text="a long one",
                        audio_path=write_wav(str(tmp_path / "audio" / "long.wav"), 6.0)))
  out = str(tmp_path / "prepared")
  rep = prepare(recs, out, PrepareOptions(name="p", num_workers=1, progress=False,
                                          filter_pairs=True, max_pair_seconds=5.0))
  assert rep["written"] == 6 and rep["dropped_long"] == 1
  assert "long-utterance rule: 6.00 s > 5.0 s" in rep["skipped_items"]["long"]
  assert "long" not in {r["utt_id"] for r in PreparedDataset(out).records}
  # Without the rule the long pair is kept (the reader truncates it to max_frames).
  rep = prepare(recs, str(tmp_path / "kept"), PrepareOptions(
      name="p", num_workers=1, progress=False, filter_pairs=True))
  assert rep["written"] == 7 and rep["dropped_long"] == 0


def test_per_speaker_standardisation_uses_no_labels_and_no_other_speaker(tmp_path):
  def run(tag, b_seed, labels):
    out = str(tmp_path / tag)
    prepare(_records(str(tmp_path / f"audio_{tag}"), b_seed, labels), out,
            PrepareOptions(name="p", label_names=("x", "y"), num_workers=1, progress=False,
                           normalize="speaker"))
    return out, PreparedDataset(out)

  out1, ds1 = run("one", b_seed=0, labels=("x", "y"))
  # Speaker b's audio and everyone's labels change: speaker a's stored features must not.
  _, ds2 = run("two", b_seed=7, labels=("y", "x"))
  by_id1, by_id2 = ({r["utt_id"]: r for r in ds.records} for ds in (ds1, ds2))
  for u in ("a0", "a1", "c0", "c1"):
    np.testing.assert_array_equal(ds1.example(by_id1[u]).features,
                                  ds2.example(by_id2[u]).features)
  assert not np.allclose(ds1.example(by_id1["b0"]).features, ds2.example(by_id2["b0"]).features)
  # Speaker a's stored features are its raw features standardised with a's own
  # frame-weighted statistics, and only those.
  raw = {u: np.load(feat_lib.feature_path(os.path.join(out1, "features"), u)) for u in ("a0", "a1")}
  x = np.concatenate(list(raw.values())).astype(np.float64)
  mean, std = x.mean(0), np.where(x.std(0) < 1e-6, 1.0, x.std(0))
  got = ds1.example(by_id1["a0"]).features
  want = ((raw["a0"] - mean) / std).astype(np.float16).astype(np.float32)
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
  stats = json.load(open(os.path.join(out1, "feature_stats.json")))
  assert stats["normalize"] == "speaker" and sorted(stats["speakers"]) == ["a", "b", "c"]
  # Each speaker's standardised frames have mean ~0 and std ~1 over its utterances.
  for spk in SPEAKERS:
    xs = np.concatenate([ds1.example(by_id1[f"{spk}{i}"]).features for i in (0, 1)])
    assert np.abs(xs.mean(0)).max() < 0.02
  # The raw view undoes the speaker's standardisation.
  np.testing.assert_allclose(ds1.example(by_id1["a0"], normalized=False).features,
                             raw["a0"], rtol=2e-3, atol=2e-3 * np.abs(raw["a0"]).max())


def test_rerun_skips_and_cached_durations_filter_alike(tmp_path):
  """A finished preparation is not redone; a rebuild from the feature cache keeps
  exactly the pairs the first run kept (durations near the pair filter's 1.5 s
  threshold: frames / 100 runs ~0.05 s short of the audio's duration)."""
  audio = tmp_path / "audio"
  recs = [Utterance(utt_id=f"u{i}", text="two words", speaker="s",
                    audio_path=write_wav(str(audio / f"u{i}.wav"), s, seed=i))
          for i, s in enumerate((1.46, 1.52, 1.55, 2.0))]
  opts = PrepareOptions(name="p", num_workers=1, progress=False, filter_pairs=True)
  out = str(tmp_path / "prepared")
  first = prepare(recs, out, opts)
  kept = [r["utt_id"] for r in PreparedDataset(out).records]
  assert kept == ["u1", "u2", "u3"] and "1.46 s < 1.5 s" in first["skipped_items"]["u0"]
  # Same inputs and options: the stored report comes back, nothing is rewritten.
  mtime = os.path.getmtime(os.path.join(out, "records.jsonl"))
  again = prepare(recs, out, opts)
  assert again == first and os.path.getmtime(os.path.join(out, "records.jsonl")) == mtime
  # Rebuilt from the cache (report gone, durations log gone): same pairs, same order,
  # and the shards still match the records.
  os.remove(os.path.join(out, "report.json"))
  os.remove(os.path.join(out, "features", feat_lib.DURATIONS))
  rebuilt = prepare(recs, out, opts)
  assert rebuilt["written"] == 3 and rebuilt["extraction_workers"] == 0
  ds = PreparedDataset(out)
  assert [r["utt_id"] for r in ds.records] == kept
  for r in ds.records:
    assert ds.example(r).utt_id == r["utt_id"]
  # Other options on the same directory: a clear error, not shards of another build.
  with pytest.raises(ValueError, match=r"prepared from other options \['min_pair_seconds'\]"):
    prepare(recs, out, dataclasses.replace(opts, min_pair_seconds=1.53))
