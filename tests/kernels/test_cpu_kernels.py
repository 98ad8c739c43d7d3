"""mced_jax/kernels: inside `cpu_bf16_scope()` the matmuls, convs, attention and
every flax Dense/DenseGeneral/Conv equal XLA's ops (forward and gradients) up to
bf16 operand rounding, and fail loudly when unsupported; the fp32 kernels equal
autodiff; the models' operations are rerouted only inside a scope."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from mced_jax.kernels import cpu_conv, cpu_layers, cpu_matmul
from mced_jax.models import ops


class M:  # the kernels under one short name
  matmul = staticmethod(cpu_matmul.matmul)
  dense_fp32 = staticmethod(cpu_matmul.dense_fp32)
  conv_general_dilated = staticmethod(cpu_conv.conv_general_dilated)
  conv_general_dilated_tap_grad = staticmethod(cpu_conv.conv_general_dilated_tap_grad)
  cpu_bf16_scope = staticmethod(cpu_layers.cpu_bf16_scope)
  cpu_fp32_scope = staticmethod(cpu_layers.cpu_fp32_scope)

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


def test_matmul_and_its_gradient():
  x, w, r = rand(3, 5, 24), rand(24, 40), rand(3, 5, 40)
  close(M.matmul(x, w), x @ w)
  got = grads(lambda x, w: (M.matmul(x, w) * r).sum(), x, w)
  want = grads(lambda x, w: ((x @ w) * r).sum(), x, w)
  for g, e in zip(got, want):
    close(g, e)
  # bf16 operands really are used: the result differs from exact fp32 slightly.
  assert not np.allclose(np.asarray(M.matmul(x, w)), np.asarray(x @ w), rtol=0, atol=1e-6)


def in_scope(f):
  def g(*a):
    with M.cpu_bf16_scope():
      return f(*a)
  return g


@pytest.mark.parametrize("features,axis", [((6, 4), -1), (10, (-2, -1))])
def test_dense_general_in_the_scope(features, axis):
  x = rand(2, 7, 3, 8)
  layer = nn.DenseGeneral(features, axis=axis)
  p = layer.init(jax.random.PRNGKey(0), x)
  y = layer.apply(p, x)
  y_fast = in_scope(layer.apply)(p, x)
  close(y_fast, y)
  assert not np.array_equal(np.asarray(y_fast), np.asarray(y))  # really rerouted
  r = rand(*y.shape)
  close(grads(in_scope(lambda p: (layer.apply(p, x) * r).sum()), p)[0]["params"]["kernel"],
        grads(lambda p: (layer.apply(p, x) * r).sum(), p)[0]["params"]["kernel"])


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


def test_flax_conv_in_the_scope():
  x = rand(2, 19, 9)
  conv = nn.Conv(12, (3,), strides=(2,), padding=[(1, 1)])
  p = conv.init(jax.random.PRNGKey(0), x)
  y, y_fast = conv.apply(p, x), in_scope(conv.apply)(p, x)
  close(y_fast, y)
  assert not np.array_equal(np.asarray(y_fast), np.asarray(y))
  with pytest.raises(NotImplementedError, match="explicit padding"):
    same = nn.Conv(12, (3,), padding="SAME")
    in_scope(same.apply)(same.init(jax.random.PRNGKey(0), x), x)


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
  out = in_scope(ops.attention)(q, k, v, mask)
  close(out, ops.attention(q, k, v, mask))
  # masked keys get no weight: changing them changes nothing
  v2 = v.at[1, 4:].set(1e3)
  close(in_scope(ops.attention)(q, k, v2, mask)[1], out[1])
  f = lambda q, k, v: (ops.attention(q, k, v, mask) * r).sum()
  for g, e in zip(grads(in_scope(f), q, k, v), grads(f, q, k, v)):
    close(g, e)


def test_einsum_checks_its_spec():
  with pytest.raises(ValueError, match="at least two terms"):
    in_scope(ops.einsum)("btd,bsd->b", rand(2, 3, 4), rand(2, 5, 4))


def test_scope_intercepts_dense_and_ends():
  x = rand(4, 10)
  d = nn.Dense(6)
  p = d.init(jax.random.PRNGKey(0), x)
  y = d.apply(p, x)
  with M.cpu_bf16_scope():
    assert ops.bound()["attention"].__wrapped__ is cpu_matmul.attention_bf16
    y_fast = d.apply(p, x)
  assert not ops.bound()
  close(y_fast, y)
  assert not np.array_equal(np.asarray(y_fast), np.asarray(y))  # really rerouted
  np.testing.assert_array_equal(np.asarray(d.apply(p, x)), np.asarray(y))  # scope over


def test_dense_gelu_matches_autodiff_in_fp32():
  """The custom gradient (gelu' kept from the forward pass) equals autodiff of
  gelu(x @ w) to fp32 rounding, forward and both gradients, batch axes included."""
  from mced_jax.models.ops import gelu
  x, w, g = rand(3, 5, 16), rand(16, 24), rand(3, 5, 24)
  ref = lambda x, w: jnp.sum(gelu(jnp.einsum("btk,kn->btn", x, w)) * g)
  got = lambda x, w: jnp.sum(cpu_matmul.dense_gelu_fp32(x, w) * g)
  np.testing.assert_allclose(cpu_matmul.dense_gelu_fp32(x, w), gelu(x @ w), rtol=0, atol=1e-6)
  for a, b in zip(grads(got, x, w), grads(ref, x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_dense_gelu_in_scope_uses_bf16_operands():
  from mced_jax.models.ops import gelu
  x, w = rand(4, 32), rand(32, 8)
  with M.cpu_bf16_scope():
    got = jax.jit(ops.dense_gelu)(x, w)
    dx, dw = grads(lambda x, w: jnp.sum(ops.dense_gelu(x, w) ** 2), x, w)
  rx, rw = grads(lambda x, w: jnp.sum(gelu(x @ w) ** 2), x, w)
  close(got, gelu(x @ w))
  close(dx, rx)
  close(dw, rw)
  # bf16 operands: not the fp32 product to the last bit
  assert not np.array_equal(np.asarray(got), np.asarray(gelu(x @ w)))


@pytest.mark.parametrize("t,c_in,k,s,pad", [(21, 13, 5, 1, (2, 2)), (20, 30, 3, 2, (1, 1)),
                                            (21, 30, 3, 2, (1, 1)), (16, 7, 3, 2, (0, 2))])
def test_tap_grad_conv_equals_lax_conv_and_its_gradients_in_fp32(t, c_in, k, s, pad):
  """cpu_fp32: XLA's forward, gradients written per tap; equal to autodiff in fp32."""
  x, w = rand(2, t, c_in), rand(k, c_in, 16) * 0.1
  dn = ("NWC", "WIO", "NWC")
  ref = lambda x, w: lax.conv_general_dilated(x, w, (s,), [pad], dimension_numbers=dn)
  tap = lambda x, w: M.conv_general_dilated_tap_grad(x, w, (s,), [pad], dimension_numbers=dn)
  np.testing.assert_array_equal(np.asarray(tap(x, w)), np.asarray(ref(x, w)))
  r = rand(*ref(x, w).shape)
  for g, e in zip(grads(lambda x, w: (tap(x, w) * r).sum(), x, w),
                  grads(lambda x, w: (ref(x, w) * r).sum(), x, w)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-5, atol=1e-5)


def fp32_scope_grads_equal(layer, x):
  """The layer's parameter gradients inside cpu_fp32_scope equal XLA's (1e-5), and
  the scope really reroutes it (a custom gradient), only inside the scope."""
  p = layer.init(jax.random.PRNGKey(0), x)
  r = rand(*layer.apply(p, x).shape)
  loss = lambda p: (layer.apply(p, x) * r).sum()

  def scoped(p):
    with M.cpu_fp32_scope():
      return loss(p)
  assert "custom_vjp_call" in str(jax.make_jaxpr(jax.grad(scoped))(p))
  assert "custom_vjp_call" not in str(jax.make_jaxpr(jax.grad(loss))(p))
  for a, b in zip(jax.tree.leaves(grads(scoped, p)), jax.tree.leaves(grads(loss, p))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_fp32_scope_routes_flax_conv_to_the_tap_gradient():
  fp32_scope_grads_equal(nn.Conv(12, (3,), strides=(2,), padding=[(1, 1)]), rand(2, 19, 9))


def test_dense_fp32_and_the_fp32_scope_equal_xla_in_fp32():
  x, w, r = rand(3, 5, 24), rand(24, 40), rand(3, 5, 40)
  np.testing.assert_array_equal(np.asarray(M.dense_fp32(x, w)),
                                np.asarray(jnp.einsum("...k,kn->...n", x, w)))
  for g, e in zip(grads(lambda x, w: (M.dense_fp32(x, w) * r).sum(), x, w),
                  grads(lambda x, w: ((x @ w) * r).sum(), x, w)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-5, atol=1e-5)
  # flax Dense and DenseGeneral (the student's qkv/out layouts) in the scope
  x = rand(2, 7, 8)
  for layer, inp in [(nn.Dense(6), x), (nn.DenseGeneral((3, 2, 4)), x),
                     (nn.DenseGeneral(5, axis=(-2, -1)), rand(2, 7, 2, 4))]:
    fp32_scope_grads_equal(layer, inp)
