"""1-D convolutions for XLA:CPU: on bf16-operand matmuls, or with fp32 gradients
written per kernel tap.

`lax.conv_general_dilated` runs at the fp32 rate in any dtype on XLA:CPU, so the
bf16 recipe computes a convolution as a sum over kernel taps of strided-slice
matmuls, or one matmul over the stacked taps (im2col) when the input has few
channels (the first layer's 130 features make per-tap matmuls too thin). In fp32
the forward pass stays XLA's, and the gradients are taken per tap (see
`conv_general_dilated_tap_grad`). Only flax's 1-D layout with explicit padding is
supported; anything else is an error rather than a silent loss of speed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from mced_jax.kernels.cpu_matmul import _weight_grad, matmul

IM2COL_MAX_CHANNELS = 256  # below this, a conv is one matmul over stacked taps


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
