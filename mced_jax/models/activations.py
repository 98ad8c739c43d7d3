"""The exact (erf) GELU, written so XLA evaluates it cheaply.

jax.nn.gelu(approximate=False) computes x * erfc(-x / sqrt(2)) / 2, which XLA
expands into two polynomial branches plus an exp, both evaluated and selected; in
the CPU distillation step those fusions were ~5 % of the op time. 0.5 * x *
(1 + erf(x / sqrt(2))) is the same function on XLA's single erf polynomial: 2.5x
faster forward on XLA:CPU, within 1.1e-6 of the exact value (float64 reference,
|x| <= 10; jax.nn.gelu: 0.4e-6), gradient within 2e-7.
"""

import jax
import numpy as np
from jax import lax

_INV_SQRT2 = np.float32(1.0 / np.sqrt(2.0))


def gelu(x: jax.Array) -> jax.Array:
  return 0.5 * x * (1.0 + lax.erf(x * _INV_SQRT2.astype(x.dtype)))
