"""models/matmul.py: the cpu_bf16 matmuls, convs and attention equal XLA's ops
(forward and gradients) up to bf16 operand rounding, and fail loudly when unsupported."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from mced_jax.models import matmul as M

RS = np.random.default_rng(0)


def rand(*shape):
  return jnp.asarray(RS.normal(size=shape), jnp.float32)


def close(a, b, rel=2e-2):
  """Equal up to bf16 operand rounding (relative to the tensor's scale)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape
  err = np.abs(a - b).max() / (np.abs(b).max() + 1e-12)
  assert err < rel, f"relative error {err:.2e}"


def grads(f, *args):
  return jax.jit(jax.grad(f, argnums=tuple(range(len(args)))))(*args)


def test_implementation_resolution():
  assert M.implementation("auto", jnp.bfloat16, "cpu") == "cpu_bf16"
  assert M.implementation("auto", jnp.float32, "cpu") == "xla"
  assert M.implementation("auto", jnp.bfloat16, "gpu") == "xla"
  assert M.implementation("xla", jnp.bfloat16, "cpu") == "xla"
  with pytest.raises(ValueError, match="needs dtype='bfloat16'"):
    M.implementation("cpu_bf16", jnp.float32, "cpu")
  with pytest.raises(ValueError, match="matmul must be one of"):
    M.implementation("fast", jnp.bfloat16)
  assert M.module_dtype("cpu_bf16", jnp.bfloat16) == jnp.float32
  assert M.module_dtype("xla", jnp.bfloat16) == jnp.bfloat16


def test_matmul_and_its_gradient():
  x, w, r = rand(3, 5, 24), rand(24, 40), rand(3, 5, 40)
  close(M.matmul(x, w), x @ w)
  got = grads(lambda x, w: (M.matmul(x, w) * r).sum(), x, w)
  want = grads(lambda x, w: ((x @ w) * r).sum(), x, w)
  for g, e in zip(got, want):
    close(g, e)
  # bf16 operands really are used: the result differs from exact fp32 slightly.
  assert not np.allclose(np.asarray(M.matmul(x, w)), np.asarray(x @ w), rtol=0, atol=1e-6)


@pytest.mark.parametrize("features,axis", [((6, 4), -1), (10, (-2, -1))])
def test_dense_general_through_dot_general(features, axis):
  x, r = rand(2, 7, 3, 8), None
  ref = nn.DenseGeneral(features, axis=axis)
  fast = nn.DenseGeneral(features, axis=axis, dot_general=M.dot_general)
  p = ref.init(jax.random.PRNGKey(0), x)
  y = ref.apply(p, x)
  close(fast.apply(p, x), y)
  r = rand(*y.shape)
  close(grads(lambda p: (fast.apply(p, x) * r).sum(), p)[0]["params"]["kernel"],
        grads(lambda p: (ref.apply(p, x) * r).sum(), p)[0]["params"]["kernel"])


@pytest.mark.parametrize("c_in,k,s", [(13, 5, 1), (300, 3, 2), (300, 3, 1), (7, 3, 2)])
def test_conv_equals_lax_conv(c_in, k, s):
  """Per-tap matmuls (c_in >= 256) and im2col (c_in < 256), strides 1 and 2."""
  x, w = rand(2, 21, c_in), rand(k, c_in, 16) * 0.1
  pad = [((k - 1) // 2, (k - 1) // 2)]
  dn = ((0, 2, 1), (2, 1, 0), (0, 2, 1))
  ref = lambda x, w: lax.conv_general_dilated(x, w, (s,), pad, dimension_numbers=("NWC", "WIO", "NWC"))
  fast = lambda x, w: M.conv_general_dilated(x, w, (s,), pad, dimension_numbers=dn)
  close(fast(x, w), ref(x, w))
  r = rand(*ref(x, w).shape)
  for g, e in zip(grads(lambda x, w: (fast(x, w) * r).sum(), x, w),
                  grads(lambda x, w: (ref(x, w) * r).sum(), x, w)):
    close(g, e)


def test_flax_conv_uses_it():
  x = rand(2, 19, 9)
  ref = nn.Conv(12, (3,), strides=(2,), padding=[(1, 1)])
  fast = nn.Conv(12, (3,), strides=(2,), padding=[(1, 1)], **M.conv_kwargs("cpu_bf16"))
  p = ref.init(jax.random.PRNGKey(0), x)
  close(fast.apply(p, x), ref.apply(p, x))


def test_unsupported_conv_is_an_error():
  x, w = rand(2, 9, 9, 4), rand(3, 3, 4, 4)
  with pytest.raises(NotImplementedError, match="1-D NWC"):
    M.conv_general_dilated(x, w, (1, 1), [(1, 1), (1, 1)])
  with pytest.raises(NotImplementedError, match="padding='SAME'"):
    M.conv_general_dilated(rand(2, 9, 4), rand(3, 4, 4), (1,), "SAME")


def test_attention_equals_dot_product_attention():
  q, k, v = rand(2, 6, 3, 8), rand(2, 9, 3, 8), rand(2, 9, 3, 8)
  mask = jnp.asarray(np.arange(9)[None] < np.array([[9], [4]]))
  r = rand(2, 6, 3, 8)
  out = M.attention(q, k, v, mask, "cpu_bf16")
  close(out, M.attention(q, k, v, mask, "xla"))
  # masked keys get no weight: changing them changes nothing
  v2 = v.at[1, 4:].set(1e3)
  close(M.attention(q, k, v2, mask, "cpu_bf16")[1], out[1])
  f = lambda impl: (lambda q, k, v: (M.attention(q, k, v, mask, impl) * r).sum())
  for g, e in zip(grads(f("cpu_bf16"), q, k, v), grads(f("xla"), q, k, v)):
    close(g, e)


def test_einsum_checks_its_spec():
  with pytest.raises(ValueError, match="at least two terms"):
    M.einsum("btd,bsd->b", rand(2, 3, 4), rand(2, 5, 4), "cpu_bf16")


def test_dense_layers_intercepts_foreign_dense():
  x = rand(4, 10)
  d = nn.Dense(6)
  p = d.init(jax.random.PRNGKey(0), x)
  y = d.apply(p, x)
  with M.dense_layers("cpu_bf16"):
    y_fast = d.apply(p, x)
  close(y_fast, y)
  assert not np.array_equal(np.asarray(y_fast), np.asarray(y))  # really rerouted
  with M.dense_layers("xla"):
    np.testing.assert_array_equal(np.asarray(d.apply(p, x)), np.asarray(y))
