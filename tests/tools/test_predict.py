"""python -m mced_jax.tools.predict: any rate/channels, broken files skipped, CSV/JSON."""

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.data_pipelines.fixtures import write_corrupt, write_wav
from mced_jax.models import export
from mced_jax.models.student import student_from_config
from mced_jax.tools import predict

CLASSES = ["neutral", "happy", "sad"]


@pytest.fixture
def classifier(tmp_path, tiny_config):
  s = tiny_config.student
  model = student_from_config(s).clone(num_classes=len(CLASSES))
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 130)), jnp.ones((1, 16), bool))
  d = str(tmp_path / "work" / "finetune" / "model_mced")
  export.save(d, params["params"], {
      "kind": "emotion_classifier", "student": {**export.student_dict(s), "num_classes": 3},
      "classes": CLASSES, "feature_mean": [0.0] * 130, "feature_std": [1.0] * 130,
      "frame_buckets": [250, 500]})
  return d


def test_predict_stereo_44k_and_broken_files(tmp_path, classifier, capsys):
  stereo = write_wav(str(tmp_path / "in" / "stereo44k.wav"), 1.5, sr=44100, channels=2)
  mono = write_wav(str(tmp_path / "in" / "sub" / "mono16k.flac"), 1.5, sr=16000)
  broken = write_corrupt(str(tmp_path / "in" / "broken.wav"))
  out = str(tmp_path / "pred.csv")
  # a work dir works as --checkpoint too (its finetune/model_mced is found)
  rc = predict.main(["predict", f"--checkpoint={tmp_path / 'work'}", f"--out={out}",
                     str(tmp_path / "in"), str(tmp_path / "missing.wav")])
  assert rc == 0
  rows = {r["path"]: r for r in csv.DictReader(open(out))}
  assert set(rows) == {stereo, mono, broken, str(tmp_path / "missing.wav")}
  for f in (stereo, mono):
    p = np.array([float(rows[f][f"p_{c}"]) for c in CLASSES])
    assert abs(p.sum() - 1) < 1e-3 and rows[f]["prediction"] == CLASSES[int(p.argmax())]
    assert abs(float(rows[f]["seconds"]) - 1.5) < 0.1  # resampled to 16 kHz, 100 frames/s
    assert rows[f]["error"] == ""
  assert "unreadable audio" in rows[broken]["error"] and rows[broken]["prediction"] == ""
  assert "not found" in rows[str(tmp_path / "missing.wav")]["error"]
  err = capsys.readouterr().err
  assert "2 file(s) scored, 2 skipped" in err and "broken.wav" in err


def test_predict_json_and_all_bad(tmp_path, classifier):
  f = write_wav(str(tmp_path / "a.wav"), 1.0, sr=22050)
  out = str(tmp_path / "p.json")
  assert predict.main(["predict", f"--checkpoint={classifier}", f"--out={out}", f]) == 0
  res = json.load(open(out))
  assert res["classes"] == CLASSES and len(res["predictions"]) == 1 and not res["skipped"]
  # only broken input: reported, exit status 1, nothing crashes
  bad = write_corrupt(str(tmp_path / "b.wav"))
  assert predict.main(["predict", f"--checkpoint={classifier}", f"--out={out}", bad]) == 1
  assert json.load(open(out))["skipped"][0]["path"] == bad


def test_predict_bad_checkpoint(tmp_path):
  assert predict.main(["predict", f"--checkpoint={tmp_path}", str(tmp_path)]) == 2
  assert predict.main(["predict", str(tmp_path)]) == 2  # no --checkpoint: usage
  with pytest.raises(FileNotFoundError, match="no exported classifier"):
    predict.resolve_checkpoint(str(tmp_path))


def test_per_speaker_classifier_standardises_each_speaker_alone(tmp_path, tiny_config):
  """A classifier fine-tuned with per-speaker statistics: each folder (or each
  --speakers entry) is standardised with its own files' statistics, so a file's
  prediction depends on its speaker's other files and on nobody else's."""
  s = tiny_config.student
  model = student_from_config(s).clone(num_classes=len(CLASSES))
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 130)), jnp.ones((1, 16), bool))
  ckpt = str(tmp_path / "model")
  export.save(ckpt, params["params"], {
      "kind": "emotion_classifier", "student": {**export.student_dict(s), "num_classes": 3},
      "classes": CLASSES, "feature_mean": None, "feature_std": None, "normalize": "speaker",
      "frame_buckets": [250, 500]})
  a = [write_wav(str(tmp_path / "a" / f"{i}.wav"), 1.0 + i / 2, seed=i, f0=110) for i in range(2)]
  b = [write_wav(str(tmp_path / "b" / f"{i}.wav"), 1.0, seed=9 + i, f0=240) for i in range(2)]
  res, skipped, _ = predict.predict_paths(ckpt, [str(tmp_path / "a"), str(tmp_path / "b")],
                                          progress=False)
  assert not skipped
  probs = {r["path"]: np.array(list(r["probabilities"].values())) for r in res}
  # Speaker a alone gives a's files the same probabilities as a and b together.
  alone, _, _ = predict.predict_paths(ckpt, [str(tmp_path / "a")], progress=False)
  for r in alone:
    np.testing.assert_allclose(list(r["probabilities"].values()), probs[r["path"]], atol=1e-6)
  # Declaring a[0] and b[0] one speaker through --speakers changes their statistics.
  spk = tmp_path / "spk.csv"
  spk.write_text("path,speaker\n" + "".join(f"{p},{n}\n" for p, n in zip(
      a + b, ["x", "a1", "x", "b1"])))
  mixed, _, _ = predict.predict_paths(ckpt, a + b, progress=False, speakers=str(spk))
  moved = {r["path"]: np.array(list(r["probabilities"].values())) for r in mixed}
  assert np.abs(moved[a[0]] - probs[a[0]]).max() > 1e-6
  # A single file is its own speaker: the model runs, never uses global statistics.
  pred = predict.Predictor(ckpt)
  with pytest.raises(ValueError, match="each speaker"):
    pred.predict_features(np.zeros((50, 130), np.float32))


def test_speaker_norm_classifier_scores_each_speaker_from_its_own_files(tmp_path, tiny_config):
  """A speaker_norm classifier standardises its pooled representation with the
  speaker's own files (a first pass): a folder scored alone or beside another
  speaker gives the same probabilities; a lone file of a speaker is skipped with
  the reason, and one file on its own is a clear error."""
  s = tiny_config.student
  with tiny_config.unlocked():
    s.speaker_norm, s.pooling = True, "stats"
  model = student_from_config(s).clone(num_classes=len(CLASSES))
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 130)), jnp.ones((1, 16), bool))
  ckpt = str(tmp_path / "model")
  export.save(ckpt, params["params"], {
      "kind": "emotion_classifier", "student": {**export.student_dict(s), "num_classes": 3},
      "classes": CLASSES, "feature_mean": [0.0] * 130, "feature_std": [1.0] * 130,
      "frame_buckets": [250, 500]})
  a = [write_wav(str(tmp_path / "a" / f"{i}.wav"), 1.0 + i / 2, seed=i, f0=110 + 40 * i)
       for i in range(3)]
  lone = write_wav(str(tmp_path / "b" / "0.wav"), 1.0, seed=9, f0=240)
  res, skipped, _ = predict.predict_paths(ckpt, [str(tmp_path / "a"), str(tmp_path / "b")],
                                          progress=False)
  assert [p for p, _ in skipped] == [lone] and "several files" in skipped[0][1]
  probs = {r["path"]: np.array(list(r["probabilities"].values())) for r in res}
  assert set(probs) == set(a) and all(abs(p.sum() - 1) < 1e-4 for p in probs.values())
  alone, _, _ = predict.predict_paths(ckpt, [str(tmp_path / "a")], progress=False)
  for r in alone:
    np.testing.assert_allclose(list(r["probabilities"].values()), probs[r["path"]], atol=1e-6)
  pred = predict.Predictor(ckpt)
  with pytest.raises(ValueError, match="per speaker"):
    pred.predict_features(np.zeros((50, 130), np.float32))
