"""Matmuls and 1-D convolutions that make bf16 fast on XLA:CPU.

On the CPUs this project runs on (AVX-512 with BF16 instructions), XLA:CPU runs a
bf16 x bf16 dot at about 2x the fp32 rate *only when the dot accumulates and
outputs fp32* (`preferred_element_type=float32`); the bf16 -> bf16 dots that flax's
layers and autodiff emit fall back to the fp32 rate, and so does
`lax.conv_general_dilated` in any dtype. Elementwise work (LayerNorm, GELU and
their gradients) is meanwhile *slower* in bf16 than in fp32 there. Measured on 2
cores (16x100x512 @ 512x2048): fp32 ~180 GFLOP/s, bf16->bf16 ~165, bf16->fp32
~310-330; LayerNorm forward+backward on 16x400x512: fp32 7 ms, bf16 17 ms.

So the "cpu_bf16" implementation is bf16 the way autocast does it: activations,
normalisation, nonlinearities and losses stay fp32, and only the operands of every
dense layer and convolution are rounded to bf16, multiplied with fp32 accumulation:
  * a dense layer is `matmul`, with a custom gradient whose two backward dots are
    of the same fast kind (autodiff alone would emit slow dots);
  * a 1-D convolution is a sum over kernel taps of strided-slice matmuls, or one
    matmul over the stacked taps (im2col) when the input has few channels (the
    first layer's 130 features make per-tap matmuls too thin to be efficient).
Numerically the products are what GPUs and TPUs compute for bf16 (bf16 operands,
fp32 accumulation); activations are kept at higher precision than bf16.

`implementation()` picks it for bf16 on CPU ("auto"); on GPUs/TPUs XLA's own dots
and convolutions are already fast, so the models run in bf16 with them ("xla").
"""

from __future__ import annotations

import contextlib
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

IMPLEMENTATIONS = ("auto", "xla", "cpu_bf16")
IM2COL_MAX_CHANNELS = 256  # below this, a conv is one matmul over stacked taps


def implementation(name: str, dtype, platform: str | None = None) -> str:
  """Resolves config `matmul` ("auto" | "xla" | "cpu_bf16") to "xla" or "cpu_bf16"."""
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"matmul must be one of {IMPLEMENTATIONS}, got {name!r}")
  if name == "auto":
    platform = platform or jax.default_backend()
    name = "cpu_bf16" if (platform == "cpu" and jnp.dtype(dtype) == jnp.bfloat16) else "xla"
  if name == "cpu_bf16" and jnp.dtype(dtype) != jnp.bfloat16:
    raise ValueError("matmul='cpu_bf16' is a bfloat16 recipe; it needs dtype='bfloat16'")
  return name


def module_dtype(impl: str, dtype):
  """The dtype flax modules compute in: fp32 under cpu_bf16 (only the matmul
  operands are bf16), else the configured compute dtype."""
  return jnp.float32 if impl == "cpu_bf16" else dtype


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


def einsum(spec: str, a: jax.Array, b: jax.Array, impl: str) -> jax.Array:
  """Two-operand einsum with fp32 output (attention scores and mixing).

  Under "cpu_bf16" the operands are rounded to bf16 and the gradient is the same
  kind of fast einsum (which needs every index in at least two of the three terms:
  checked); under "xla" it is jnp.einsum in the operands' dtype with fp32
  accumulation.
  """
  if impl != "cpu_bf16":
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)
  lhs, out = spec.replace(" ", "").split("->")
  sa, sb = lhs.split(",")
  terms = (sa, sb, out)
  if any(sum(c in t for t in terms) < 2 for c in set(sa + sb + out)):
    raise ValueError(f"einsum {spec!r}: every index must appear in at least two terms")
  return _bf16_einsum(f"{sa},{sb}->{out}", a, b)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array,
              impl: str) -> jax.Array:
  """Multi-head attention over [B, T, N, H] with a [B, S] key mask, fp32 softmax.

  "xla" uses jax.nn.dot_product_attention (XLA picks fused kernels on GPU/TPU);
  "cpu_bf16" writes it out on `einsum` so the two products run on the fast dots.
  """
  if impl != "cpu_bf16":
    return jax.nn.dot_product_attention(q, k, v, mask=key_mask[:, None, None, :])
  scale = 1.0 / math.sqrt(q.shape[-1])
  # Heads to the front: batched matmuls with leading batch axes everywhere (the
  # form XLA:CPU's fast bf16 kernel takes, gradients included).
  q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))
  scores = einsum("bnth,bnsh->bnts", q, k, impl) * scale
  scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1)
  return jnp.swapaxes(einsum("bnts,bnsh->bnth", probs, v, impl), 1, 2).astype(q.dtype)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                **kwargs):
  """Drop-in for `lax.dot_general` in flax Dense/DenseGeneral (`dot_general=`).

  Handles the dense-layer pattern (contract trailing lhs axes with leading rhs axes,
  no batch axes) through `matmul`; anything else goes to lax.dot_general.
  """
  (lc, rc), (lb, rb) = dimension_numbers
  lc, rc = tuple(a % lhs.ndim for a in lc), tuple(a % rhs.ndim for a in rc)
  n = len(lc)
  dense = (not lb and not rb and lc == tuple(range(lhs.ndim - n, lhs.ndim))
           and rc == tuple(range(n)))
  if not dense:
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type, **kwargs)
  k = math.prod(lhs.shape[lhs.ndim - n:])
  x = lhs.reshape(lhs.shape[: lhs.ndim - n] + (k,))
  w = rhs.reshape((k, -1))
  y = matmul(x, w)
  if preferred_element_type is not None:
    y = y.astype(preferred_element_type)
  return y.reshape(lhs.shape[: lhs.ndim - n] + rhs.shape[n:])


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, preferred_element_type=None, **kwargs):
  """Drop-in for `lax.conv_general_dilated` in flax's 1-D nn.Conv (`conv_general_dilated=`).

  y[t] = sum_i x_padded[t * stride + i] @ W[i], on `matmul`. Only the layout flax
  uses for 1-D inputs (NWC, WIO), explicit padding, no dilation and no groups are
  supported; anything else is an error rather than a silent fallback, so a config
  change cannot quietly lose speed.
  """
  del precision, kwargs
  unsupported = []
  if lhs.ndim != 3:
    unsupported.append(f"{lhs.ndim - 2}-D input")
  if any(d != 1 for d in (lhs_dilation or (1,))) or any(d != 1 for d in (rhs_dilation or (1,))):
    unsupported.append("dilation")
  if feature_group_count != 1:
    unsupported.append("feature groups")
  if isinstance(padding, str):
    unsupported.append(f"padding={padding!r} (give explicit pairs)")
  if dimension_numbers is not None and tuple(dimension_numbers) != (
      (0, 2, 1), (2, 1, 0), (0, 2, 1)):
    unsupported.append(f"dimension numbers {dimension_numbers}")
  if unsupported:
    raise NotImplementedError("matmul='cpu_bf16' convolution supports 1-D NWC convolutions "
                              "only; not: " + ", ".join(unsupported))
  (stride,), ((lo, hi),) = tuple(window_strides), tuple(tuple(p) for p in padding)
  taps, c_in, c_out = rhs.shape
  x = jnp.pad(lhs, ((0, 0), (lo, hi), (0, 0)))
  t_out = (x.shape[1] - taps) // stride + 1
  shifted = [lax.slice_in_dim(x, i, i + stride * (t_out - 1) + 1, stride=stride, axis=1)
             for i in range(taps)]
  if c_in < IM2COL_MAX_CHANNELS:
    y = matmul(jnp.concatenate(shifted, axis=-1), rhs.reshape(taps * c_in, c_out))
  else:
    y = sum(matmul(xi, rhs[i]) for i, xi in enumerate(shifted))
  return y.astype(preferred_element_type or lhs.dtype)


def layer_kwargs(impl: str) -> dict:
  """Keyword arguments that switch flax Dense/DenseGeneral to `impl`."""
  return {"dot_general": dot_general} if impl == "cpu_bf16" else {}


def conv_kwargs(impl: str) -> dict:
  """Keyword arguments that switch flax nn.Conv (1-D) to `impl`."""
  return {"conv_general_dilated": conv_general_dilated} if impl == "cpu_bf16" else {}


def _dense_interceptor(next_fun, args, kwargs, context):
  """Runs flax nn.Dense layers of foreign modules (transformers' FlaxBert) on `matmul`."""
  m = context.module
  if (context.method_name != "__call__" or type(m) is not nn.Dense  # pylint: disable=unidiomatic-typecheck
      or m.dot_general is not None or m.dot_general_cls is not None
      or not m.has_variable("params", "kernel")):
    return next_fun(*args, **kwargs)
  (x,) = args
  params = m.variables["params"]
  # No promotion of the (possibly bf16) kernel to the module dtype: matmul rounds
  # both operands to bf16 itself, so a promotion would only be a round trip.
  y = matmul(x.astype(m.dtype), params["kernel"])
  return y if "bias" not in params else y + params["bias"].astype(y.dtype)


@contextlib.contextmanager
def dense_layers(impl: str):
  """Within this context, every plain flax nn.Dense applied runs on `impl`."""
  if impl != "cpu_bf16":
    yield
    return
  with nn.intercept_methods(_dense_interceptor):
    yield
