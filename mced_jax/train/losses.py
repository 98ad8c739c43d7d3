"""MCED objectives (paper eq. 1, 3, 4). The soft-align block (eq. 2) is in
`mced_jax/models/soft_align.py`.

Reductions (recorded in configs/mced.py and the README):
  * RL: per-example KL(p_t || p_s) averaged over the real examples of the batch,
    times temp**2 (Hinton et al.) so its gradient scale does not shrink as the
    temperature grows. Eq. 1 as printed carries a minus sign; the student
    *minimises* the KL, so we drop it.
  * FL: squared error summed over the teacher's hidden dimension, averaged over the
    valid (non-padding) teacher tokens of the batch and divided by d_t, i.e. the usual
    per-element MSE. Averaging keeps FL's scale independent of sentence length and of
    d_t, so the paper's lambdas balance it against RL for MiniLM and BERT-base alike.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def response_kl(teacher_logits, student_logits, temperature: float,
                example_mask=None, scale_by_t2: bool = True):
  """Eq. 1: mean_i KL(softmax(z_t/temp) || softmax(z_s/temp))."""
  t = jnp.float32(temperature)
  log_pt = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t, axis=-1)
  log_ps = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
  kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)
  if example_mask is None:
    example_mask = jnp.ones_like(kl)
  w = example_mask.astype(jnp.float32)
  loss = jnp.sum(kl * w) / jnp.maximum(jnp.sum(w), 1.0)
  return loss * (t * t if scale_by_t2 else 1.0)


def feature_mse(h_teacher, h_aligned, token_mask):
  """Eq. 3 for one layer pair: MSE over valid teacher tokens and hidden dims."""
  diff = h_teacher.astype(jnp.float32) - h_aligned.astype(jnp.float32)
  per_token = jnp.sum(diff * diff, axis=-1)
  w = token_mask.astype(jnp.float32)
  return jnp.sum(per_token * w) / (jnp.maximum(jnp.sum(w), 1.0) * h_teacher.shape[-1])


def mced_loss(rl, fl_terms: Sequence, lambdas: Sequence[float], rl_weight: float = 1.0):
  """Eq. 4: L = L_RL + sum_j lambda_j L_FL,j."""
  total = rl_weight * rl
  for lam, fl in zip(lambdas, fl_terms):
    total = total + lam * fl
  return total
