"""The few operations the models call whose fastest form depends on the hardware.

Each has its plain JAX definition here, which is what GPUs and TPUs run. The
precision policy (`mced_jax/kernels/precision.py`) may `bind` other
implementations of the same maths while it traces a step -- the CPU kernels of
`mced_jax/kernels` -- so the models never import a kernel and never choose one.

`gelu` is the exact (erf) GELU everywhere. jax.nn.gelu(approximate=False)
computes x * erfc(-x / sqrt(2)) / 2, which XLA expands into two polynomial
branches plus an exp, both evaluated and selected; 0.5 * x * (1 + erf(x / sqrt(2)))
is the same function on XLA's single erf polynomial (2.5x faster forward on
XLA:CPU, within 1.1e-6 of a float64 reference for |x| <= 10).
"""

from __future__ import annotations

import contextlib
import contextvars

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_INV_SQRT2 = np.float32(1.0 / np.sqrt(2.0))
_BOUND = contextvars.ContextVar("mced_ops", default={})
NAMES = ("dense_gelu", "einsum", "attention", "dropout_mask")


@contextlib.contextmanager
def bind(**impls):
  """Within the block (read at trace time), the named operations run on `impls`."""
  bad = sorted(set(impls) - set(NAMES))
  if bad:
    raise ValueError(f"unknown operation(s) {bad}; known: {', '.join(NAMES)}")
  token = _BOUND.set({**_BOUND.get(), **impls})
  try:
    yield
  finally:
    _BOUND.reset(token)


def bound() -> dict:
  """The implementations bound now (empty: the plain definitions)."""
  return dict(_BOUND.get())


def gelu(x: jax.Array) -> jax.Array:
  return 0.5 * x * (1.0 + lax.erf(x * _INV_SQRT2.astype(x.dtype)))


def dense_gelu(x: jax.Array, w: jax.Array) -> jax.Array:
  """gelu(x @ w): a bias-free dense layer and the exact GELU (soft-align keys and
  values), in the operands' dtype."""
  impl = _BOUND.get().get("dense_gelu")
  return impl(x, w) if impl else gelu(jnp.einsum("...k,kn->...n", x, w))


def einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
  """Two-operand einsum with fp32 accumulation and output (attention scores, mixing)."""
  impl = _BOUND.get().get("einsum")
  return impl(spec, a, b) if impl else jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array) -> jax.Array:
  """Multi-head attention over [B, T, N, H] with a [B, S] key mask, fp32 softmax
  (jax.nn.dot_product_attention: XLA picks fused kernels on GPU/TPU)."""
  impl = _BOUND.get().get("attention")
  if impl:
    return impl(q, k, v, key_mask)
  return jax.nn.dot_product_attention(q, k, v, mask=key_mask[:, None, None, :])


def dropout_mask(key: jax.Array, shape, keep_prob: float) -> jax.Array:
  """A boolean keep-mask, True with probability keep_prob per element."""
  impl = _BOUND.get().get("dropout_mask")
  return impl(key, shape, keep_prob) if impl else jax.random.bernoulli(key, keep_prob, shape)


class Dropout(nn.Module):
  """Inverted dropout (drop with probability `rate`, scale kept values by
  1/(1-rate)) on `dropout_mask`, with a fresh key per call from the 'dropout' RNG."""

  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    keep_prob = 1.0 - self.rate
    mask = dropout_mask(self.make_rng("dropout"), x.shape, keep_prob)
    return jnp.where(mask, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros((), x.dtype))
