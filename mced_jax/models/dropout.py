"""Dropout whose mask comes from a keyed integer hash instead of threefry.

flax's nn.Dropout draws one threefry uniform per element. On XLA:CPU that costs
about 11 ns per element (42 ms for a 16 x 100 x 2048 MLP activation, measured on
this project's 2-core machine), which made random-number generation ~15 % of a
CPU distillation step. Here the mask is a counter-based hash: element i keeps its
value when

    fmix32(fmix32(i * 0x9E3779B9 ^ k0) ^ k1) < keep_prob * 2**32

with fmix32 the murmur3 finaliser (full avalanche: every input bit flips each output
bit with probability ~1/2) and (k0, k1) 64 fresh bits drawn per call from the
module's 'dropout' RNG, so masks differ per layer and per step exactly as with
nn.Dropout, and a given RNG reproduces its mask. It is plain elementwise integer
arithmetic, ~100x cheaper on CPU and partitionable like any iota under a mesh.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

_GOLDEN = np.uint32(0x9E3779B9)


def _fmix32(h: jax.Array) -> jax.Array:
  h = h ^ (h >> 16)
  h = h * np.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * np.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def keep_mask(key: jax.Array, shape, keep_prob: float) -> jax.Array:
  """Boolean mask, True with probability `keep_prob` per element, from a jax PRNG key."""
  k = jax.random.bits(key, (2,), jnp.uint32)
  size = int(np.prod(shape)) if len(shape) else 1
  idx = lax.iota(jnp.uint32, size).reshape(shape)
  h = _fmix32(_fmix32((idx * _GOLDEN) ^ k[0]) ^ k[1])
  # keep_prob * 2^32, clipped into uint32 range: exact to 2^-32.
  threshold = np.uint32(min(int(round(keep_prob * 2.0 ** 32)), 2 ** 32 - 1))
  return h < threshold


class Dropout(nn.Module):
  """Inverted dropout (drop with probability `rate`, scale kept values by 1/(1-rate))."""

  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    keep_prob = 1.0 - self.rate
    mask = keep_mask(self.make_rng("dropout"), x.shape, keep_prob)
    return jnp.where(mask, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros((), x.dtype))
