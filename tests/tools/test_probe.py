"""Linear probes of a frozen student (mced_jax.tools.probe) on the classic reference's folds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines.buckets import pad_frame_rows
from mced_jax.evaluation import classic
from mced_jax.evaluation import labelled
from mced_jax.evaluation import protocols
from mced_jax.models import export
from mced_jax.models import student as student_lib
from mced_jax.tools import probe


@pytest.fixture
def student_dir(tiny_config, tmp_path):
  """A tiny 'distilled' student export (its parameters from seed 7)."""
  c = tiny_config
  student = student_lib.student_from_config(c.student)
  params = student.init(jax.random.PRNGKey(7), jnp.zeros((1, 16, c.student.feature_dim)),
                        jnp.ones((1, 16), bool))["params"]
  export.save_student(str(tmp_path / "student"), c, params, step=1, source="test")
  return str(tmp_path / "student"), c.student.feature_dim, params


def _corpus(dim: int):
  """4 speakers x 8 utterances of 20-60 frames, 2 classes."""
  rng = np.random.default_rng(0)
  records, feats, labels = [], {}, {}
  for s in range(4):
    for i in range(8):
      u = f"s{s}_{i}"
      feats[u] = (rng.normal(size=(int(rng.integers(20, 60)), dim)) + (i % 2)).astype(np.float32)
      records.append({"utt_id": u, "speaker": f"spk{s}", "label": "ab"[i % 2]})
      labels[u] = i % 2
  return labelled.Corpus(records, feats, ("a", "b"), labels, "synthetic")


def test_level_is_the_frozen_hidden_state_statistics_whatever_the_batch(student_dir):
  path, dim, params = student_dir
  corpus = _corpus(dim)
  ids = list(corpus.features)
  feat = probe.Featurizer(path, "distilled", level=2, batch_size=8)
  rows = feat(corpus.features, ids)
  assert rows.shape == (len(ids), 2 * feat.student.d_model)
  # One utterance alone, unpadded, through the exported parameters.
  x = corpus.features[ids[5]]
  student = feat.student
  _, hidden, mask = student.apply({"params": params}, x[None], np.ones((1, len(x)), bool))
  want = np.asarray(student_lib.pool_frames(hidden[2], mask, "stats"))[0]
  np.testing.assert_allclose(rows[5], want, rtol=1e-4, atol=1e-4)
  alone = probe.Featurizer(path, "distilled", level=2, batch_size=1)(corpus.features, ids[5:6])
  np.testing.assert_allclose(alone[0], rows[5], rtol=1e-4, atol=1e-4)


def test_random_init_differs_and_stats_are_appended(student_dir):
  path, dim, _ = student_dir
  corpus = _corpus(dim)
  ids = list(corpus.features)[:6]
  distilled = probe.Featurizer(path, "distilled")(corpus.features, ids)
  rand = probe.Featurizer(path, "random", seed=0)(corpus.features, ids)
  assert distilled.shape == rand.shape and not np.allclose(distilled, rand)
  both = probe.Featurizer(path, "distilled", with_stats=True)(corpus.features, ids)
  np.testing.assert_allclose(both[:, : distilled.shape[1]], distilled, rtol=1e-6)
  np.testing.assert_array_equal(both[:, distilled.shape[1]:],
                                classic.stats_features(corpus.features, ids))


def test_probe_scores_a_fold_and_the_cli_refuses_bad_input(student_dir, capsys):
  path, dim, _ = student_dir
  corpus = _corpus(dim)
  fold = protocols.make_folds(corpus.records, "speaker_kfold", 4)[0]
  res = classic.run_fold(corpus, fold, "speaker", 0.1,
                         probe.Featurizer(path, "distilled", with_stats=True))
  assert 0.0 <= res["UAR"] <= 1.0 and res["n"] == len(fold.test)
  assert probe.main(["probe", path]) == 2
  assert probe.main(["probe", path, "/nonexistent/prepared"]) == 2
  assert "records.jsonl" in capsys.readouterr().err
  assert probe.main(["probe", path, "/nonexistent/prepared", "--level=99"]) == 2
  assert "--level must be" in capsys.readouterr().err


def test_class_map_matches_by_name_and_refuses_disjoint_sets():
  got = probe.class_map(("neutral", "happiness", "surprise", "sadness", "anger"),
                        ("neutral", "happy", "sad", "angry", "surprised", "calm"))
  np.testing.assert_array_equal(got, [0, 1, 4, 2, 3])
  assert list(probe.class_map(("joy", "fear"), ("happy",))) == [0, -1]
  with pytest.raises(ValueError, match="no teacher class"):
    probe.class_map(("a", "b"), ("c",))


def test_zero_shot_predicts_only_with_the_distilled_head(student_dir, tmp_path):
  path, dim, params = student_dir
  corpus = _corpus(dim)
  # The teacher's two classes: "b" first, so a score mix-up would show.
  meta = export.load(path)[1]
  meta["teacher_class_names"] = ["b", "a"] + ["x"] * (meta["teacher_classes"] - 2)
  named = str(tmp_path / "named")
  export.save(named, params, meta)
  feat = probe.Featurizer(named, "distilled", level="logits")
  fold = protocols.make_folds(corpus.records, "speaker_kfold", 4)[0]
  res = probe.zero_shot_fold(corpus, fold, "fold", feat)
  feats = labelled.standardized(corpus, fold, fold.train, "fold")
  # The exported head on the test utterances, zero-padded into one batch (the
  # student ignores padding: tests/models/test_student.py); jitted, as eager
  # dispatch of the whole student takes a minute.
  x, mask = pad_frame_rows([feats[u] for u in fold.test],
                           max(len(feats[u]) for u in fold.test), len(fold.test))
  logits = np.asarray(jax.jit(feat.student.apply)({"params": params}, x, mask)[0])[:, :2]
  want = np.where(logits.argmax(1) == 0, 1, 0)  # teacher "b" -> corpus class 1
  y = np.array([corpus.labels[u] for u in fold.test])
  np.testing.assert_allclose(res["WA"], (want == y).mean())
  with pytest.raises(ValueError, match="logits"):
    probe.zero_shot_fold(corpus, fold, "fold", probe.Featurizer(named, "distilled"))
