"""Matmuls and 1-D convolutions that make bf16 fast on XLA:CPU.

On CPUs with bf16 units (avx512_bf16 / AMX), XLA:CPU runs a bf16 x bf16 dot at about 2x the fp32 rate *only when the dot accumulates and
outputs fp32* (`preferred_element_type=float32`); the bf16 -> bf16 dots that flax's
layers and autodiff emit fall back to the fp32 rate, and so does
`lax.conv_general_dilated` in any dtype. Elementwise work (LayerNorm, GELU and
their gradients) is meanwhile *slower* in bf16 than in fp32 there. Measured on 2
cores (16x100x512 @ 512x2048): fp32 ~180 GFLOP/s, bf16->bf16 ~165, bf16->fp32
~310-330; LayerNorm forward+backward on 16x400x512: fp32 7 ms, bf16 17 ms. (On
an AVX2- or plain-AVX-512 CPU without bf16 units none of this pays: the precision
policy's `auto` keeps such CPUs in fp32.)

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

The models never choose: they call `attention`/`einsum`/`dense_gelu` here and use
plain flax Dense/DenseGeneral/Conv layers. `cpu_bf16_scope()` (entered by the precision
policy around a step, `mced_jax/precision.py`) switches all of them at once: a
flax method interceptor routes every Dense, DenseGeneral and 1-D Conv applied
inside it -- the student's, the soft-align blocks' and transformers' FlaxBert
teacher's -- to the kernels below, and `attention`/`einsum`/`dense_gelu` see the
scope too.
Outside the scope everything runs on XLA's own dots and convolutions, except that
in fp32 on a CPU the policy enters `cpu_fp32_scope()`: the same interceptor routes
dense layers to `dense_fp32` and 1-D convolutions to
`conv_general_dilated_tap_grad`. Both keep XLA's fp32 forward products and write
their gradients so that XLA:CPU makes no layout copies for them (the weight
gradient as one row-major dot; a convolution's gradients per kernel tap).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mced_jax.models import activations

IM2COL_MAX_CHANNELS = 256  # below this, a conv is one matmul over stacked taps

_ACTIVE = contextvars.ContextVar("mced_cpu_bf16", default=False)


def active() -> bool:
  """True inside `cpu_bf16_scope()` (read at trace time)."""
  return _ACTIVE.get()


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
  return 0.5 * z * (1.0 + erf), (x, w, slope)  # activations.gelu, term for term


def _dense_gelu_bwd(res, g):
  x, w, slope = res
  gz = g * slope  # formed once, in the [..., N] layout
  dx = jnp.einsum("...n,kn->...k", gz, w)
  return dx, _weight_grad(x, gz)


_dense_gelu.defvjp(_dense_gelu_fwd, _dense_gelu_bwd)


def dense_gelu(x: jax.Array, w: jax.Array) -> jax.Array:
  """gelu(x @ w): a bias-free dense layer and the exact GELU (the soft-align keys
  and values), in the operands' dtype.

  Outside the cpu_bf16 scope its gradient keeps gelu'(z) from the forward pass and
  forms g * gelu'(z) once. Autodiff of the two ops kept erf and exp parts and
  rebuilt that product twice in the backward pass, once per layout (as is for dx,
  transposed for dW); on XLA:CPU the transposed rebuild was the largest layout
  copy of the fp32 distillation step (8 a step, ~14 ms each). Inside the scope:
  `matmul`, then gelu (the bf16 recipe's kernels).
  """
  if active():
    return activations.gelu(matmul(x, w))
  return _dense_gelu(x, w)


def einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
  """Two-operand einsum with fp32 output (attention scores and mixing).

  Inside the cpu_bf16 scope the operands are rounded to bf16 and the gradient is
  the same kind of fast einsum (which needs every index in at least two of the
  three terms: checked); elsewhere it is jnp.einsum in the operands' dtype with
  fp32 accumulation.
  """
  if not active():
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)
  lhs, out = spec.replace(" ", "").split("->")
  sa, sb = lhs.split(",")
  terms = (sa, sb, out)
  if any(sum(c in t for t in terms) < 2 for c in set(sa + sb + out)):
    raise ValueError(f"einsum {spec!r}: every index must appear in at least two terms")
  return _bf16_einsum(f"{sa},{sb}->{out}", a, b)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array) -> jax.Array:
  """Multi-head attention over [B, T, N, H] with a [B, S] key mask, fp32 softmax.

  Outside the cpu_bf16 scope: jax.nn.dot_product_attention (XLA picks fused
  kernels on GPU/TPU); inside it, written out on `einsum` so the two products run
  on the fast dots.
  """
  if not active():
    return jax.nn.dot_product_attention(q, k, v, mask=key_mask[:, None, None, :])
  scale = 1.0 / math.sqrt(q.shape[-1])
  # Heads to the front: batched matmuls with leading batch axes everywhere (the
  # form XLA:CPU's fast bf16 kernel takes, gradients included).
  q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))
  scores = einsum("bnth,bnsh->bnts", q, k) * scale
  scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1)
  return jnp.swapaxes(einsum("bnts,bnsh->bnth", probs, v), 1, 2).astype(q.dtype)


def _check_conv1d(lhs, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                  feature_group_count, kernels: str):
  """Only the layout flax uses for 1-D inputs (NWC, WIO), explicit padding, no
  dilation and no groups are supported; anything else is an error rather than a
  silent fallback, so a config change cannot quietly lose speed."""
  unsupported = []
  if lhs.ndim != 3:
    unsupported.append(f"{lhs.ndim - 2}-D input")
  if any(d != 1 for d in (lhs_dilation or (1,))) or any(d != 1 for d in (rhs_dilation or (1,))):
    unsupported.append("dilation")
  if feature_group_count != 1:
    unsupported.append("feature groups")
  if isinstance(padding, str):
    unsupported.append(f"padding={padding!r} (give explicit pairs)")
  if dimension_numbers is not None and tuple(dimension_numbers) not in (
      ((0, 2, 1), (2, 1, 0), (0, 2, 1)), ("NWC", "WIO", "NWC")):
    unsupported.append(f"dimension numbers {dimension_numbers}")
  if unsupported:
    raise NotImplementedError(f"the {kernels} convolution supports 1-D NWC convolutions "
                              "only; not: " + ", ".join(unsupported))


def _taps(x, taps: int, stride: int, lo: int, hi: int):
  """The padded input and its `taps` strided views: view i holds, for every output
  frame t, input frame t * stride + i (of the padded input)."""
  xp = jnp.pad(x, ((0, 0), (lo, hi), (0, 0)))
  t_out = (xp.shape[1] - taps) // stride + 1
  return xp, [lax.slice_in_dim(xp, i, i + stride * (t_out - 1) + 1, stride=stride, axis=1)
              for i in range(taps)]


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, preferred_element_type=None, **kwargs):
  """`lax.conv_general_dilated` for flax's 1-D nn.Conv on bf16-operand matmuls:
  y[t] = sum_i x_padded[t * stride + i] @ W[i], on `matmul`."""
  del precision, kwargs
  _check_conv1d(lhs, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                feature_group_count, "cpu_bf16")
  (stride,), ((lo, hi),) = tuple(window_strides), tuple(tuple(p) for p in padding)
  taps, c_in, c_out = rhs.shape
  _, shifted = _taps(lhs, taps, stride, lo, hi)
  if c_in < IM2COL_MAX_CHANNELS:
    y = matmul(jnp.concatenate(shifted, axis=-1), rhs.reshape(taps * c_in, c_out))
  else:
    y = sum(matmul(xi, rhs[i]) for i, xi in enumerate(shifted))
  return y.astype(preferred_element_type or lhs.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv1d_tap_grad(x, w, stride: int, lo: int, hi: int):
  return lax.conv_general_dilated(x, w, (stride,), [(lo, hi)],
                                  dimension_numbers=("NWC", "WIO", "NWC"))


def _conv1d_tap_grad_fwd(x, w, stride, lo, hi):
  return _conv1d_tap_grad(x, w, stride, lo, hi), (x, w)


def _conv1d_tap_grad_bwd(stride, lo, hi, res, g):
  x, w = res
  taps = w.shape[0]
  xp, shifted = _taps(x, taps, stride, lo, hi)
  span = stride * (g.shape[1] - 1) + 1  # padded frames the output's taps cover
  # dW[i] = view_i^T @ g over all (batch, frame) rows.
  dw = jnp.stack([_weight_grad(xi, g) for xi in shifted])
  # dx: g @ W[i]^T lands on input frames t * stride + i; interior padding spreads
  # each tap's rows to their frames, and the sum over taps is one fusion.
  dxp = sum(lax.pad(jnp.einsum("btn,kn->btk", g, w[i]), jnp.zeros((), g.dtype),
                    ((0, 0, 0), (i, xp.shape[1] - i - span, stride - 1), (0, 0, 0)))
            for i in range(taps))
  return dxp[:, lo: lo + x.shape[1]].astype(x.dtype), dw.astype(w.dtype)


_conv1d_tap_grad.defvjp(_conv1d_tap_grad_fwd, _conv1d_tap_grad_bwd)


def conv_general_dilated_tap_grad(lhs, rhs, window_strides, padding, lhs_dilation=None,
                                  rhs_dilation=None, dimension_numbers=None,
                                  feature_group_count=1, precision=None,
                                  preferred_element_type=None, **kwargs):
  """`lax.conv_general_dilated` (fp32, 1-D) whose gradient is written per kernel tap.

  The forward pass is XLA's convolution. Its autodiff gradients are convolutions
  too, and XLA:CPU feeds them transposed copies: the layer input in [C, T, B] order
  (re-running LayerNorm and GELU in that order, 45 ms for the first conv block
  layer at the benchmark shapes) and the kernel flipped (6-9 ms per layer). Per
  tap, dW[i] is one row-major dot and dx one dot per tap spread by interior
  padding: the same sums with no layout copies (fp32 step -3 %, README Benchmark).
  """
  del precision, kwargs
  _check_conv1d(lhs, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                feature_group_count, "cpu_fp32")
  (stride,), ((lo, hi),) = tuple(window_strides), tuple(tuple(p) for p in padding)
  y = _conv1d_tap_grad(lhs, rhs, int(stride), int(lo), int(hi))
  return y.astype(preferred_element_type or lhs.dtype)


def _dense_general(m, x, params, matmul=matmul):
  """flax DenseGeneral (no batch dims, trailing contracted axes) on `matmul`."""
  axis = tuple(a % x.ndim for a in (m.axis if isinstance(m.axis, tuple) else (m.axis,)))
  n = len(axis)
  if m.batch_dims or axis != tuple(range(x.ndim - n, x.ndim)):
    return None
  features = m.features if isinstance(m.features, tuple) else (m.features,)
  lead = x.shape[: x.ndim - n]
  kernel = params["kernel"]
  y = matmul(x.astype(m.dtype or x.dtype).reshape(lead + (-1,)),
             kernel.reshape((-1, math.prod(features))))
  y = y.reshape(lead + features)
  return y if "bias" not in params else y + params["bias"].astype(y.dtype)


def _tuple(d):
  return None if d is None else ((d,) if isinstance(d, int) else tuple(d))


def _conv(m, x, params, conv=conv_general_dilated, kernels="cpu_bf16"):
  """flax 1-D nn.Conv with explicit padding on `conv` (the bf16 per-tap/im2col
  kernel, or the fp32 tap-gradient one)."""
  padding = m.padding
  if isinstance(padding, str) or isinstance(padding, int):
    raise NotImplementedError(f"{kernels} convolution needs explicit padding pairs, got "
                              f"padding={padding!r}")
  strides = m.strides if m.strides is not None else 1
  strides = (strides,) if isinstance(strides, int) else tuple(strides)
  y = conv(x.astype(m.dtype or x.dtype), params["kernel"], strides,
           [tuple(p) for p in padding], lhs_dilation=_tuple(m.input_dilation),
           rhs_dilation=_tuple(m.kernel_dilation), feature_group_count=m.feature_group_count)
  return y if "bias" not in params else y + params["bias"].astype(y.dtype)


def _make_interceptor(dense, conv, kernels: str):
  """A flax method interceptor that runs Dense, DenseGeneral and 1-D Conv layers
  (ours and transformers' FlaxBert's) on `dense` and `conv`. Layers without
  parameters yet (init) and any other layout take XLA's path."""

  def intercept(next_fun, args, kwargs, context):
    m = context.module
    kind = type(m)
    if (context.method_name != "__call__" or kind not in (nn.Dense, nn.DenseGeneral, nn.Conv)
        or not m.has_variable("params", "kernel") or len(args) != 1 or kwargs
        or getattr(m, "dot_general", None) is not None
        or getattr(m, "dot_general_cls", None) is not None):
      return next_fun(*args, **kwargs)
    (x,) = args
    params = m.variables["params"]
    if kind is nn.Dense:
      # No promotion of a (possibly bf16) kernel to the module dtype: the bf16
      # matmul rounds both operands itself, so a promotion would only be a round trip.
      y = dense(x.astype(m.dtype or x.dtype), params["kernel"])
      return y if "bias" not in params else y + params["bias"].astype(y.dtype)
    if kind is nn.DenseGeneral:
      y = _dense_general(m, x, params, dense)
      return next_fun(*args, **kwargs) if y is None else y
    return _conv(m, x, params, conv, kernels)

  return intercept


_interceptor = _make_interceptor(matmul, conv_general_dilated, "cpu_bf16")
_fp32_interceptor = _make_interceptor(dense_fp32, conv_general_dilated_tap_grad, "cpu_fp32")


@contextlib.contextmanager
def cpu_bf16_scope():
  """Every Dense/DenseGeneral/Conv applied, and every `attention`/`einsum` traced,
  inside this scope runs on the bf16-operand / fp32-accumulate kernels."""
  token = _ACTIVE.set(True)
  try:
    with nn.intercept_methods(_interceptor):
      yield
  finally:
    _ACTIVE.reset(token)


def cpu_fp32_scope():
  """Every Dense/DenseGeneral applied inside this scope runs on `dense_fp32` and
  every 1-D Conv on `conv_general_dilated_tap_grad`: XLA's own fp32 forward
  products, with gradients written so that XLA:CPU makes no layout copies for them."""
  return nn.intercept_methods(_fp32_interceptor)
