"""The soft-align block of MCED (paper eq. 2).

Teacher word states attend over student frame states:

    h_hat = softmax( (h_t W_q) . gelu(h_s W_k)^T / sqrt(d_t) ) . gelu(h_s W_v)

W_q is d_t x d_t, W_k and W_v are d_s x d_t, all without bias (as in the equation).
Keys at padded student frames are masked out, so padding cannot attract attention.
The output has the teacher's shape [B, T_t, d_t].
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mced_jax.models import ops

Dtype = Any


class _Kernel(nn.Module):
  """A bias-free nn.Dense's kernel alone: same parameter path (`W_k/kernel`), init
  and values, so `ops.dense_gelu` can take it (checkpoints are unchanged)."""

  shape: tuple[int, int]

  @nn.compact
  def __call__(self) -> jax.Array:
    return self.param("kernel", nn.initializers.lecun_normal(), self.shape, jnp.float32)


class SoftAlign(nn.Module):
  teacher_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h_teacher: jax.Array, h_student: jax.Array, student_mask: jax.Array):
    d_t = self.teacher_dim
    q = nn.Dense(d_t, use_bias=False, dtype=self.dtype, name="W_q")(h_teacher)
    h_s = h_student.astype(self.dtype)
    shape = (h_s.shape[-1], d_t)
    k = ops.dense_gelu(h_s, _Kernel(shape, name="W_k")().astype(self.dtype))
    v = ops.dense_gelu(h_s, _Kernel(shape, name="W_v")().astype(self.dtype))
    # Scores and softmax in fp32: the softmax over hundreds of frames is the one place
    # where bf16 rounding visibly changes the alignment.
    scores = ops.einsum("btd,bsd->bts", q, k)
    scores = scores / jnp.sqrt(jnp.float32(d_t))
    scores = jnp.where(student_mask[:, None, :], scores, jnp.finfo(jnp.float32).min)
    attn = jax.nn.softmax(scores, axis=-1)
    return ops.einsum("bts,bsd->btd", attn.astype(self.dtype), v)


class SoftAlignSet(nn.Module):
  """One SoftAlign block per distilled layer pair (each pair learns its own alignment:
  the paper's layers carry different information, so sharing W would couple them)."""

  teacher_dim: int
  num_pairs: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, teacher_states, student_states, student_mask):
    return [
        SoftAlign(self.teacher_dim, dtype=self.dtype, name=f"pair_{j}")(
            teacher_states[j], student_states[j], student_mask)
        for j in range(self.num_pairs)
    ]
