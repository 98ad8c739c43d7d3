"""MCED losses (eq. 1-4) against an independent NumPy implementation, and padding
invariance of the whole objective."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from data_pipelines.synthetic import SyntheticPairs
from mced_jax.models.soft_align import SoftAlign
from mced_jax.train import distill
from mced_jax.train import losses
from tests.helpers import pad_batch


def np_softmax(x, axis=-1):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def np_gelu(x):
  return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def np_kl(zt, zs, temp, t2=True):
  pt, ps = np_softmax(zt / temp), np_softmax(zs / temp)
  kl = np.sum(pt * (np.log(pt) - np.log(ps)), axis=-1)
  return kl.mean() * (temp ** 2 if t2 else 1.0)


def np_soft_align(ht, hs, smask, wq, wk, wv):
  q = ht @ wq
  k = np_gelu(hs @ wk)
  v = np_gelu(hs @ wv)
  scores = q @ np.swapaxes(k, 1, 2) / np.sqrt(ht.shape[-1])
  scores = np.where(smask[:, None, :], scores, -np.inf)
  return np_softmax(scores) @ v


def np_mse(ht, hhat, tmask):
  per_tok = ((ht - hhat) ** 2).sum(-1)
  return (per_tok * tmask).sum() / (tmask.sum() * ht.shape[-1])


@pytest.mark.parametrize("temp,t2", [(1.0, False), (2.0, True), (5.0, True)])
def test_response_kl_matches_numpy(temp, t2):
  rng = np.random.default_rng(0)
  zt, zs = rng.normal(size=(2, 16, 5)).astype(np.float64) * 3
  got = losses.response_kl(jnp.asarray(zt, jnp.float32), jnp.asarray(zs, jnp.float32),
                           temp, scale_by_t2=t2)
  assert abs(float(got) - np_kl(zt, zs, temp, t2)) <= 1e-5
  assert float(losses.response_kl(zt, zt, temp)) == pytest.approx(0.0, abs=1e-6)


def test_response_kl_ignores_masked_examples():
  rng = np.random.default_rng(1)
  zt, zs = rng.normal(size=(2, 6, 5)).astype(np.float32)
  mask = np.array([1, 1, 1, 0, 0, 0], bool)
  got = losses.response_kl(zt, zs, 2.0, example_mask=mask)
  assert abs(float(got) - np_kl(zt[:3], zs[:3], 2.0)) <= 1e-5


def test_soft_align_and_mse_match_numpy():
  rng = np.random.default_rng(2)
  b, tt, ts, dt, ds = 3, 7, 11, 12, 10
  ht = rng.normal(size=(b, tt, dt)).astype(np.float32)
  hs = rng.normal(size=(b, ts, ds)).astype(np.float32)
  lengths = np.array([11, 6, 1])
  smask = np.arange(ts)[None] < lengths[:, None]
  block = SoftAlign(dt)
  params = block.init(jax.random.PRNGKey(0), ht, hs, smask)["params"]
  got = np.asarray(block.apply({"params": params}, ht, hs, smask))
  want = np_soft_align(ht.astype(np.float64), hs.astype(np.float64), smask,
                       *(np.asarray(params[n]["kernel"], np.float64)
                         for n in ("W_q", "W_k", "W_v")))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  assert set(params) == {"W_q", "W_k", "W_v"}
  assert params["W_q"]["kernel"].shape == (dt, dt)
  assert params["W_k"]["kernel"].shape == (ds, dt)
  tmask = np.arange(tt)[None] < np.array([7, 3, 5])[:, None]
  mse = losses.feature_mse(ht, got, tmask)
  assert abs(float(mse) - np_mse(ht.astype(np.float64), want, tmask)) <= 1e-5


def test_soft_align_parameters_are_dense_kernels():
  """W_k and W_v are taken as bare kernels (for matmul.dense_gelu) but keep nn.Dense's
  paths, shapes and initial values, so checkpoints and seeds carry over."""
  import flax.linen as nn

  class DenseKV(nn.Module):  # how the block declared them before
    @nn.compact
    def __call__(self, hs):
      return [nn.Dense(8, use_bias=False, name=n)(hs) for n in ("W_k", "W_v")]

  rng = np.random.default_rng(4)
  ht = rng.normal(size=(2, 5, 8)).astype(np.float32)
  hs = rng.normal(size=(2, 9, 6)).astype(np.float32)
  smask = np.ones((2, 9), bool)
  params = SoftAlign(8).init(jax.random.PRNGKey(7), ht, hs, smask)["params"]
  dense = DenseKV().init(jax.random.PRNGKey(7), hs)["params"]
  for n in ("W_k", "W_v"):
    assert set(params[n]) == {"kernel"}
    np.testing.assert_array_equal(params[n]["kernel"], dense[n]["kernel"])


def test_soft_align_ignores_padded_student_frames():
  rng = np.random.default_rng(3)
  ht = rng.normal(size=(2, 5, 8)).astype(np.float32)
  hs = rng.normal(size=(2, 9, 6)).astype(np.float32)
  smask = np.arange(9)[None] < np.array([[9], [4]])
  block = SoftAlign(8)
  params = block.init(jax.random.PRNGKey(0), ht, hs, smask)["params"]
  out = block.apply({"params": params}, ht, hs, smask)
  hs2 = np.concatenate([hs, 50 * rng.normal(size=(2, 7, 6)).astype(np.float32)], 1)
  hs2[1, 4:] = 99.0
  smask2 = np.arange(16)[None] < np.array([[9], [4]])
  out2 = block.apply({"params": params}, ht, hs2, smask2)
  np.testing.assert_allclose(out, out2, atol=1e-6)


def test_mced_total_is_weighted_sum():
  total = losses.mced_loss(0.5, [1.0, 2.0], [0.1, 0.3], rl_weight=1.0)
  assert float(total) == pytest.approx(0.5 + 0.1 + 0.6)


def test_padding_changes_no_logit_and_no_loss(tiny_config):
  cfg = tiny_config
  dist = distill.build(cfg)
  state = dist.spec.create()
  src = SyntheticPairs(4, cfg.data.max_frames, cfg.data.max_tokens, cfg.teacher.vocab_size,
                       min_frames=cfg.data.min_frames, min_tokens=cfg.data.min_tokens)
  batch = src.global_batch_at(0)
  padded = pad_batch(batch, extra_frames=17, extra_tokens=5)
  rng = jax.random.PRNGKey(1)
  loss_fn = jax.jit(lambda p, t, b: dist.loss_fn(p, b, rng, t, train=False))
  _, aux_a = loss_fn(state.params, dist.teacher_params, batch)
  _, aux_b = loss_fn(state.params, dist.teacher_params, padded)
  for k in aux_a:
    assert abs(float(aux_a[k]) - float(aux_b[k])) <= 1e-5 * max(1.0, abs(float(aux_a[k]))), k
  # jitted: op-by-op these two models cost most of the test's time
  student = jax.jit(lambda p, f, m: dist.student.apply({"params": p}, f, m)[0])
  teacher = jax.jit(lambda p, i, m: dist.teacher.apply(p, i, m)[0])
  s_a = student(state.params["student"], batch["features"], batch["frame_mask"])
  s_b = student(state.params["student"], padded["features"], padded["frame_mask"])
  np.testing.assert_allclose(s_a, s_b, atol=1e-5)
  t_a = teacher(dist.teacher_params, batch["input_ids"], batch["attention_mask"])
  t_b = teacher(dist.teacher_params, padded["input_ids"], padded["attention_mask"])
  np.testing.assert_allclose(t_a, t_b, atol=1e-5)
