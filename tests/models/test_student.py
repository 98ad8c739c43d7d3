"""The speech student: shapes, masks, padding invariance, masked max-pooling."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mced_jax.kernels import precision
from mced_jax.models.student import (Student, conv_output_mask, pool_frames,
                                     speaker_pooled_stats)


def tiny_student(**kw):
  args = dict(num_classes=4, conv_channels=(8, 8, 8, 8), d_model=16, num_layers=3,
              num_heads=4, mlp_dim=32, classifier_hidden=8, dropout=0.0)
  args.update(kw)
  return Student(**args)


def init(m, x, mask):
  return jax.jit(m.init)(jax.random.PRNGKey(0), x, mask)["params"]


def run(m, params, *args, **kw):
  """m.apply compiled whole: op by op, these small models cost seconds a call."""
  return jax.jit(functools.partial(m.apply, **kw))({"params": params}, *args)


def test_shapes_and_hidden_states():
  m = tiny_student()
  x = np.random.default_rng(0).normal(size=(2, 37, 130)).astype(np.float32)
  mask = np.arange(37)[None] < np.array([[37], [20]])
  params = init(m, x, mask)
  logits, hidden, out_mask = run(m, params, x, mask)
  assert logits.shape == (2, 4)
  assert len(hidden) == 4  # conv output + 3 layers
  # strides (1, 2, 1, 2): 37 -> 19 -> 10 frames; valid 37 -> 10, 20 -> 5
  assert hidden[-1].shape == (2, 10, 16)
  np.testing.assert_array_equal(np.asarray(out_mask).sum(1), [10, 5])


def test_conv_output_mask_is_ceil_of_length():
  lengths = np.arange(1, 30)
  mask = np.arange(30)[None] < lengths[:, None]
  out = np.asarray(conv_output_mask(jnp.asarray(mask), 2)).sum(1)
  np.testing.assert_array_equal(out, -(-lengths // 2))


@pytest.mark.parametrize("cpu_bf16,atol,pooling", [(False, 1e-5, "max"), (True, 1e-2, "max"),
                                                   (False, 1e-5, "stats"),
                                                   (False, 1e-5, "mstats"),
                                                   (False, 1e-5, "stats+input")])
def test_appending_padding_changes_nothing(cpu_bf16, atol, pooling):
  how, _, extra = pooling.partition("+")
  m = tiny_student(pooling=how, input_stats=extra == "input")
  policy = precision.Policy("bfloat16" if cpu_bf16 else "float32", cpu_bf16)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(3, 41, 130)).astype(np.float32)
  lengths = np.array([41, 30, 7])
  mask = np.arange(41)[None] < lengths[:, None]
  params = init(m, x, mask)

  def apply(x, mask):
    with policy.scope():
      return run(m, params, x, mask)

  logits, hidden, out_mask = apply(x, mask)
  for extra in (1, 2, 13):
    xp = np.concatenate([x, 1e4 * rng.normal(size=(3, extra, 130)).astype(np.float32)], 1)
    xp = np.where((np.arange(41 + extra)[None] < lengths[:, None])[..., None], xp, -7e3)
    mp = np.arange(41 + extra)[None] < lengths[:, None]
    logits_p, hidden_p, mask_p = apply(xp, mp)
    np.testing.assert_allclose(logits, logits_p, atol=atol)
    t = hidden[-1].shape[1]
    valid = np.asarray(out_mask)
    np.testing.assert_array_equal(np.asarray(mask_p)[:, :t], valid)
    for h, hp in zip(hidden, hidden_p):
      np.testing.assert_allclose(np.asarray(h)[valid], np.asarray(hp)[:, :t][valid],
                                 atol=10 * atol)


def test_same_utterance_alone_or_batched():
  m = tiny_student()
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 32, 130)).astype(np.float32)
  mask = np.arange(32)[None] < np.array([[32], [18]])
  params = init(m, x, mask)
  both = run(m, params, x, mask)[0]
  alone = run(m, params, x[1:, :18], np.ones((1, 18), bool))[0]
  np.testing.assert_allclose(both[1:], alone, atol=1e-5)


def test_max_pool_never_picks_padding():
  # A huge feature value at padded frames would dominate any unmasked max.
  m = tiny_student(num_layers=1)
  x = np.zeros((1, 16, 130), np.float32)
  x[0, :8] = np.random.default_rng(3).normal(size=(8, 130))
  mask = np.arange(16)[None] < 8
  params = init(m, x, mask)
  a = run(m, params, x, mask)[0]
  x[0, 8:] = 1e6
  b = run(m, params, x, mask)[0]
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_stats_pool_is_mean_and_std_of_valid_frames():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(2, 9, 3)).astype(np.float32)
  x[1, 5:] = 1e6  # padding: must not move either statistic
  mask = np.arange(9)[None] < np.array([[9], [5]])
  got = np.asarray(pool_frames(jnp.asarray(x), jnp.asarray(mask), "stats"))
  for i, n in enumerate((9, 5)):
    np.testing.assert_allclose(got[i, :3], x[i, :n].mean(0), atol=1e-5)
    np.testing.assert_allclose(got[i, 3:], x[i, :n].std(0), atol=1e-3)
  with pytest.raises(ValueError, match="pooling"):
    pool_frames(jnp.asarray(x), jnp.asarray(mask), "mean")


@pytest.mark.parametrize("pooling", ["max", "stats", "mstats"])
def test_all_padding_row_is_finite(pooling):
  m = tiny_student(pooling=pooling)
  x = np.ones((2, 12, 130), np.float32)
  mask = np.zeros((2, 12), bool)
  mask[0, :5] = True
  params = init(m, x, mask)
  logits = run(m, params, x, mask)[0]
  assert np.isfinite(np.asarray(logits)).all()


def test_bf16_compute_keeps_fp32_params():
  m = tiny_student(dtype=jnp.bfloat16)
  x = np.ones((1, 12, 130), np.float32)
  mask = np.ones((1, 12), bool)
  params = init(m, x, mask)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  logits, hidden, _ = run(m, params, x, mask)
  assert hidden[-1].dtype == jnp.bfloat16 and logits.dtype == jnp.float32


def test_speaker_norm_groups_match_given_stats_and_stay_within_the_speaker():
  """Per-speaker standardisation of the pooled vector: in-batch groups and
  precomputed per-speaker statistics agree, and a group's predictions do not depend
  on any other speaker's utterances (no other speaker's data, no labels)."""
  m = tiny_student(pooling="stats", speaker_norm=True)
  rng = np.random.default_rng(5)
  x = rng.normal(size=(8, 24, 130)).astype(np.float32)
  mask = np.arange(24)[None] < rng.integers(12, 25, size=(8, 1))
  params = init(m, x, mask)
  grouped = np.asarray(run(m, params, x, mask, group_size=4)[0])
  _, state = run(m, params, x, mask, mutable=["intermediates"])
  pooled = np.asarray(state["intermediates"]["pooled"][0])
  stats = speaker_pooled_stats(pooled, ["a"] * 4 + ["b"] * 4)
  given = np.asarray(run(m, params, x, mask, pooled_stats=stats)[0])
  np.testing.assert_allclose(grouped, given, rtol=1e-4, atol=1e-4)
  # the statistics move the logits (the option is not a no-op) ...
  raw = np.asarray(run(m, params, x, mask)[0])
  assert np.abs(raw - grouped).max() > 1e-3
  # ... and speaker b's utterances never reach speaker a's predictions
  x2 = x.copy()
  x2[4:] = rng.normal(size=(4, 24, 130))
  other = np.asarray(run(m, params, x2, mask, group_size=4)[0])
  np.testing.assert_allclose(other[:4], grouped[:4], rtol=1e-5, atol=1e-5)
  assert np.abs(other[4:] - grouped[4:]).max() > 1e-3
  with pytest.raises(ValueError, match="speaker groups"):
    run(m, params, x, mask, group_size=3)
