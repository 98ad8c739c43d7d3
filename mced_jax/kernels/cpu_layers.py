"""The CPU kernel scopes: flax layers and model operations rerouted to the kernels.

A flax method interceptor runs every Dense, DenseGeneral and 1-D Conv applied
inside a scope -- the student's, the soft-align blocks' and transformers' FlaxBert
teacher's -- on the scope's dense and conv kernels, and `ops.bind` points the
models' own operations (attention, einsum, dense_gelu, dropout masks) at theirs.
The precision policy enters one scope around a traced step (`precision.py`).

  cpu_bf16: bf16 operands with fp32 accumulation for every product (cpu_matmul,
            cpu_conv); fp32 activations.
  cpu_fp32: XLA's fp32 forward products with copy-free gradients.
  Both draw dropout masks from a keyed integer hash (hash_dropout.py), ~100x
  cheaper than threefry on a CPU.
"""

from __future__ import annotations

import contextlib
import math

import flax.linen as nn

from mced_jax.kernels import hash_dropout, kernel
from mced_jax.kernels.cpu_conv import conv_general_dilated, conv_general_dilated_tap_grad
from mced_jax.kernels.cpu_matmul import (attention_bf16, dense_fp32, dense_gelu_bf16,
                                         dense_gelu_fp32, einsum_bf16, matmul)
from mced_jax.models import ops


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


_interceptor = _make_interceptor(kernel(matmul), kernel(conv_general_dilated), "cpu_bf16")
_fp32_interceptor = _make_interceptor(kernel(dense_fp32), kernel(conv_general_dilated_tap_grad),
                                      "cpu_fp32")
_BF16_OPS = {"dense_gelu": kernel(dense_gelu_bf16), "einsum": kernel(einsum_bf16),
             "attention": kernel(attention_bf16), "dropout_mask": kernel(hash_dropout.keep_mask)}
_FP32_OPS = {"dense_gelu": kernel(dense_gelu_fp32), "dropout_mask": _BF16_OPS["dropout_mask"]}


@contextlib.contextmanager
def cpu_bf16_scope():
  """Every Dense/DenseGeneral/Conv applied, and every attention/einsum/dense_gelu
  traced, inside this scope runs on the bf16-operand / fp32-accumulate kernels."""
  with ops.bind(**_BF16_OPS), nn.intercept_methods(_interceptor):
    yield


@contextlib.contextmanager
def cpu_fp32_scope():
  """Every Dense/DenseGeneral applied inside this scope runs on `dense_fp32`, every
  1-D Conv on `conv_general_dilated_tap_grad`, and dense_gelu on `dense_gelu_fp32`:
  XLA's own fp32 forward products, with gradients written so that XLA:CPU makes no
  layout copies for them."""
  with ops.bind(**_FP32_OPS), nn.intercept_methods(_fp32_interceptor):
    yield


def cpu_dropout_scope():
  """XLA's own products (matmul='xla' on a CPU), with the hash dropout masks, so a
  comparison of kernels sees the same masks."""
  return ops.bind(dropout_mask=_BF16_OPS["dropout_mask"])
