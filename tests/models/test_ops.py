"""models/ops.py: our erf GELU is the exact GELU; the plain operations are what runs
outside a kernel scope."""

import jax
import jax.numpy as jnp
import numpy as np

from mced_jax.models.ops import gelu


def test_gelu_equals_exact_gelu_and_its_gradient():
  x = jnp.linspace(-12.0, 12.0, 48001)
  np.testing.assert_allclose(gelu(x), jax.nn.gelu(x, approximate=False), atol=2e-6, rtol=0)
  np.testing.assert_allclose(jax.vmap(jax.grad(gelu))(x),
                             jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(x),
                             atol=1e-6, rtol=0)
  assert gelu(jnp.ones(2, jnp.bfloat16)).dtype == jnp.bfloat16
