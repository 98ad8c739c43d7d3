"""kernels/hash_dropout.py: the hash-based dropout mask behaves like dropout, and the
models' Dropout takes it only inside a CPU kernel scope."""

import jax
import jax.numpy as jnp
import numpy as np

from mced_jax.kernels.cpu_layers import cpu_fp32_scope
from mced_jax.kernels.hash_dropout import keep_mask
from mced_jax.models.ops import Dropout


def test_keep_rate_and_independence():
  m = np.asarray(keep_mask(jax.random.PRNGKey(0), (64, 100, 128), 0.9))
  n = m.size
  # binomial: 6 standard deviations
  assert abs(m.mean() - 0.9) < 6 * np.sqrt(0.09 / n)
  # neighbours (along each axis) and a second key's mask are uncorrelated
  f = m.astype(np.float64) - m.mean()
  for a, b in ((f[..., 1:], f[..., :-1]), (f[:, 1:], f[:, :-1]), (f[1:], f[:-1])):
    assert abs((a * b).mean() / f.var()) < 0.01
  m2 = np.asarray(keep_mask(jax.random.PRNGKey(1), (64, 100, 128), 0.9)).astype(np.float64)
  assert abs(((m2 - m2.mean()) * f).mean() / f.var()) < 0.01
  # rows are not shifted copies of each other
  assert not any(np.array_equal(m[0, 0], m[0, j]) for j in range(1, 100))


def test_same_key_same_mask_and_other_rates():
  k = jax.random.PRNGKey(5)
  np.testing.assert_array_equal(keep_mask(k, (7, 33), 0.5), keep_mask(k, (7, 33), 0.5))
  assert abs(float(keep_mask(k, (200, 200), 0.5).mean()) - 0.5) < 0.01
  assert bool(keep_mask(k, (100,), 1.0).all())


def test_module_scales_and_respects_deterministic():
  x = jnp.ones((32, 1000))
  d = Dropout(0.25)
  with cpu_fp32_scope():
    y = d.apply({}, x, False, rngs={"dropout": jax.random.PRNGKey(0)})
  # the hash mask inside the scope; threefry's Bernoulli outside it
  plain = d.apply({}, x, False, rngs={"dropout": jax.random.PRNGKey(0)})
  assert not np.array_equal(np.asarray(y), np.asarray(plain))
  assert abs(float(plain.mean()) - 1.0) < 0.02
  vals = np.unique(np.asarray(y))
  np.testing.assert_allclose(vals, [0.0, 1 / 0.75], rtol=1e-6)
  assert abs(float(y.mean()) - 1.0) < 0.02  # inverted dropout keeps the mean
  np.testing.assert_array_equal(d.apply({}, x, True), x)
  np.testing.assert_array_equal(Dropout(0.0).apply({}, x, False), x)
  np.testing.assert_array_equal(Dropout(1.0).apply({}, x, False), jnp.zeros_like(x))
  y2 = d.apply({}, x, False, rngs={"dropout": jax.random.PRNGKey(1)})
  assert not np.array_equal(np.asarray(y), np.asarray(y2))


def test_indices_never_wrap_past_the_counter_range():
  """A flat uint32 counter would repeat past 2^32 elements. The mask of an array
  too big to build here is checked on a small counter range: with `limit` = 1000,
  rows of a (4, 1000) array are separate chunks, and their masks independent --
  where a flat counter mod 1000 would give four identical rows."""
  k = jax.random.PRNGKey(3)
  m = np.asarray(keep_mask(k, (4, 1000), 0.5, limit=1000))
  for i in range(1, 4):
    agree = (m[0] == m[i]).mean()
    assert 0.4 < agree < 0.6  # independent: ~1/2, not 1
  # below the limit (one chunk) the mask is the single-chunk formula, unchanged
  np.testing.assert_array_equal(keep_mask(k, (4, 250), 0.5),
                                keep_mask(k, (4, 250), 0.5, limit=1001))
  # chunks are axis groups from the right, each under the limit
  from mced_jax.kernels.hash_dropout import _chunks
  assert _chunks((2, 3, 500), 1000) == [(2,), (0, 1)]
  assert _chunks((2, 3, 100), 1000) == [(0, 1, 2)]
  assert _chunks((16384, 250, 2048), 2 ** 32) == [(1, 2), (0,)]  # 8.4e9 elements
