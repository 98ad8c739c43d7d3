"""Matmuls that make bf16 fast, and fp32 gradients copy-free, on XLA:CPU.

On CPUs with bf16 units (avx512_bf16 / AMX), XLA:CPU runs a bf16 x bf16 dot at
about 2x the fp32 rate *only when the dot accumulates and outputs fp32*
(`preferred_element_type=float32`); the bf16 -> bf16 dots that flax's layers and
autodiff emit fall back to the fp32 rate. Elementwise work (LayerNorm, GELU and
their gradients) is meanwhile *slower* in bf16 than in fp32 there. Measured on 2
cores (16x100x512 @ 512x2048): fp32 ~180 GFLOP/s, bf16->bf16 ~165, bf16->fp32
~310-330; LayerNorm forward+backward on 16x400x512: fp32 7 ms, bf16 17 ms.

So the "cpu_bf16" recipe is bf16 the way autocast does it: activations,
normalisation, nonlinearities and losses stay fp32, and only the operands of every
dense layer, convolution and attention product are rounded to bf16 and multiplied
with fp32 accumulation, through custom gradients whose backward dots are of the
same fast kind (autodiff alone would emit slow dots). Numerically the products are
what GPUs and TPUs compute for bf16.

In fp32 ("cpu_fp32"), XLA's forward products are kept and only the gradients are
written so that XLA:CPU makes no layout copies for them: the weight gradient as
one row-major dot (`dense_fp32`, `dense_gelu_fp32`).

Nothing here is called by the models: `cpu_layers.py` binds these for a traced
step when the precision policy (`precision.py`) says so.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from mced_jax.models import ops


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _bf16_einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
  """einsum(spec, a, b) on bf16 operands with fp32 accumulation and output."""
  return _bf16_einsum_fwd(spec, a, b)[0]


def _bf16_einsum_fwd(spec, a, b):
  # The bf16 copies are what the backward pass needs (half the memory of fp32).
  ab, bb = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
  out = jnp.einsum(spec, ab, bb, preferred_element_type=jnp.float32)
  return out, (ab, bb, jnp.zeros((), a.dtype), jnp.zeros((), b.dtype))


def _bf16_einsum_bwd(spec, res, g):
  """Both gradients are einsums of the same fast kind (autodiff alone would emit
  fp32 x bf16 dots, which run at the slow rate). Valid when every index appears in
  at least two of the three terms: then da = einsum(out, b -> a), db = einsum(a, out -> b).
  For a dense layer ("...k,kn->...n") db contracts all leading axes in one dot,
  the form XLA:CPU runs on its fast bf16 kernel."""
  ab, bb, a_like, b_like = res
  lhs, out = spec.split("->")
  sa, sb = lhs.split(",")
  gb = g.astype(jnp.bfloat16)
  da = jnp.einsum(f"{out},{sb}->{sa}", gb, bb, preferred_element_type=jnp.float32)
  db = jnp.einsum(f"{sa},{out}->{sb}", ab, gb, preferred_element_type=jnp.float32)
  return da.astype(a_like.dtype), db.astype(b_like.dtype)


_bf16_einsum.defvjp(_bf16_einsum_fwd, _bf16_einsum_bwd)


def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x [..., K] @ w [K, N] with bf16 operands and fp32 accumulation, in x's dtype."""
  return _bf16_einsum("...k,kn->...n", x, w).astype(x.dtype)


def _weight_grad(x, g):
  """dW = x^T @ g over all leading (row) axes, as one row-major dot: the form
  XLA:CPU runs without writing either operand transposed first."""
  return jnp.einsum("mk,mn->kn", x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1]))


@jax.custom_vjp
def dense_fp32(x: jax.Array, w: jax.Array) -> jax.Array:
  """x [..., K] @ w [K, N] in fp32, with the weight gradient as one row-major dot.

  Autodiff's weight gradient contracts the leading axes of x and g; XLA:CPU then
  writes g (or x) transposed first, fused into the elementwise op that makes it
  (e.g. a dropout gradient as [512, 1600], 6-7 ms). Written as
  (rows, K)^T @ (rows, N), the dot takes its operands as they are (fp32 step -2 %).
  """
  return jnp.einsum("...k,kn->...n", x, w)


def _dense_fp32_fwd(x, w):
  return dense_fp32(x, w), (x, w)


def _dense_fp32_bwd(res, g):
  x, w = res
  dx = jnp.einsum("...n,kn->...k", g, w)
  return dx, _weight_grad(x, g)


dense_fp32.defvjp(_dense_fp32_fwd, _dense_fp32_bwd)


_INV_SQRT2, _INV_SQRT_2PI = 1.0 / math.sqrt(2.0), 1.0 / math.sqrt(2.0 * math.pi)


@jax.custom_vjp
def _dense_gelu(x: jax.Array, w: jax.Array) -> jax.Array:
  return _dense_gelu_fwd(x, w)[0]


def _dense_gelu_fwd(x, w):
  z = jnp.einsum("...k,kn->...n", x, w)
  erf = lax.erf(z * _INV_SQRT2)
  slope = 0.5 * (1.0 + erf) + z * jnp.exp(-0.5 * z * z) * _INV_SQRT_2PI  # gelu'(z)
  return 0.5 * z * (1.0 + erf), (x, w, slope)  # ops.gelu, term for term


def _dense_gelu_bwd(res, g):
  x, w, slope = res
  gz = g * slope  # formed once, in the [..., N] layout
  dx = jnp.einsum("...n,kn->...k", gz, w)
  return dx, _weight_grad(x, gz)


_dense_gelu.defvjp(_dense_gelu_fwd, _dense_gelu_bwd)


def dense_gelu_bf16(x: jax.Array, w: jax.Array) -> jax.Array:
  """gelu(x @ w) on the bf16 recipe: `matmul`, then the exact GELU in fp32."""
  return ops.gelu(matmul(x, w))


def dense_gelu_fp32(x: jax.Array, w: jax.Array) -> jax.Array:
  """gelu(x @ w) whose gradient keeps gelu'(z) from the forward pass and forms
  g * gelu'(z) once. Autodiff of the two ops kept erf and exp parts and rebuilt
  that product twice in the backward pass, once per layout (as is for dx,
  transposed for dW); on XLA:CPU the transposed rebuild was the largest layout
  copy of the fp32 distillation step (8 a step, ~14 ms each)."""
  return _dense_gelu(x, w)


def einsum_bf16(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
  """Two-operand einsum on bf16 operands with fp32 output, whose gradient is the
  same kind of fast einsum (every index must be in at least two of the three
  terms: checked)."""
  lhs, out = spec.replace(" ", "").split("->")
  sa, sb = lhs.split(",")
  terms = (sa, sb, out)
  if any(sum(c in t for t in terms) < 2 for c in set(sa + sb + out)):
    raise ValueError(f"einsum {spec!r}: every index must appear in at least two terms")
  return _bf16_einsum(f"{sa},{sb}->{out}", a, b)


def attention_bf16(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array) -> jax.Array:
  """Multi-head attention over [B, T, N, H] with a [B, S] key mask and an fp32
  softmax, written out on `einsum_bf16` so the two products run on the fast dots."""
  scale = 1.0 / math.sqrt(q.shape[-1])
  # Heads to the front: batched matmuls with leading batch axes everywhere (the
  # form XLA:CPU's fast bf16 kernel takes, gradients included).
  q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))
  scores = einsum_bf16("bnth,bnsh->bnts", q, k) * scale
  scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1)
  return jnp.swapaxes(einsum_bf16("bnts,bnsh->bnth", probs, v), 1, 2).astype(q.dtype)
