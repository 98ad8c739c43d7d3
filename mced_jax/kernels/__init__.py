"""Hardware kernels, reached only through the precision policy (`precision.py`).

The models call the plain operations of `mced_jax.models.ops` and use stock flax
layers; `precision.Policy.scope()` binds the kernels here for the duration of a
traced step on the hardware they were written for (today: XLA:CPU), so on GPUs
and TPUs none of them is in the program.
"""

import collections
import functools

# Kernel name -> how often a traced program called it: the tests read it to show
# that a program traced under an accelerator policy holds none of them.
TRACED = collections.Counter()


def kernel(fn):
  """`fn`, counted in TRACED each time it is traced into a program."""

  @functools.wraps(fn)
  def traced(*args, **kwargs):
    TRACED[fn.__name__] += 1
    return fn(*args, **kwargs)

  return traced
