"""The MCED speech student (paper section 2.2).

Conv1D block (4 layers) -> sinusoidal positions -> Transformer encoder (6 layers,
4 heads, d_model 512) -> max-pool over valid frames -> 2 fully-connected layers.
`pooling="stats"` (an extra-row option, not the paper's) pools the mean and the
standard deviation over valid frames instead, the utterance statistics that make
the classic functionals baseline strong; `"mstats"` pools them from every level
(the projected conv output, each layer, the final norm), so the classifier also
sees the shallow levels that distillation's feature-level loss shapes.
`input_stats=True` (extra rows only) also hands the classifier the mean and std of
the input LLDs themselves: the classic functionals inside the model, to measure
what the learned layers add on top of them.
`speaker_norm=True` (extra rows only) standardises the pooled vector with its
speaker's statistics before the classifier: the representation-level analogue of
per-speaker feature standardisation (no labels, no other speaker's data). In
training the statistics come from each group of `group_size` consecutive batch rows
(one speaker's utterances); in evaluation the caller passes each row's speaker
statistics over all of that speaker's utterances (`pooled_stats`, computed from the
"pooled" intermediate of a first pass, see `speaker_pooled_stats`), together with
that pass's pooled vectors (`pooled`), so the second pass runs only the classifier.

Padding invariance is a design goal: appending padding frames must not change the
logits or the hidden states of valid frames. That is why
  * padded frames are zeroed before every convolution,
  * convolutions use explicit symmetric padding (SAME padding shifts its left pad
    with the input length when the stride is 2, which would move frames),
  * normalisation is per frame (LayerNorm), never over time,
  * attention masks padded keys, and max-pooling ignores padded frames.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mced_jax.models import ops
from mced_jax.models.ops import Dropout, gelu

Dtype = Any


def conv_output_mask(mask: jax.Array, stride: int) -> jax.Array:
  """Frame mask after a stride-`stride` conv with symmetric padding (k odd).

  Output frame i is centred on input frame i*stride, so it is valid exactly when
  that input frame is valid: the valid length becomes ceil(L / stride).
  """
  if stride == 1:
    return mask
  return mask[:, ::stride]


def sinusoidal_positions(length: int, dim: int) -> np.ndarray:
  """Fixed sinusoidal positional encoding (Vaswani et al.), [length, dim]."""
  pos = np.arange(length)[:, None].astype(np.float64)
  i = np.arange(dim // 2)[None, :].astype(np.float64)
  angle = pos / np.power(10000.0, 2.0 * i / dim)
  enc = np.zeros((length, dim), np.float32)
  enc[:, 0::2] = np.sin(angle)
  enc[:, 1::2] = np.cos(angle)
  return enc


class ConvBlock(nn.Module):
  """4 masked Conv1D layers, each Conv -> LayerNorm -> GELU."""

  channels: Sequence[int]
  kernels: Sequence[int]
  strides: Sequence[int]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array):
    for i, (c, k, s) in enumerate(zip(self.channels, self.kernels, self.strides)):
      if k % 2 != 1:
        raise ValueError(f"conv kernel sizes must be odd for exact masking, got {k}")
      x = jnp.where(mask[..., None], x, 0).astype(self.dtype)
      pad = (k - 1) // 2
      x = nn.Conv(c, (k,), strides=(s,), padding=[(pad, pad)], dtype=self.dtype,
                  name=f"conv_{i}")(x)
      mask = conv_output_mask(mask, s)
      # Explicit padding can leave one surplus output frame; keep shapes in sync.
      x = x[:, : mask.shape[1]]
      x = nn.LayerNorm(dtype=self.dtype, name=f"ln_{i}")(x)
      x = gelu(x)
    x = jnp.where(mask[..., None], x, 0)
    return x, mask


class EncoderLayer(nn.Module):
  """Pre-LayerNorm Transformer encoder layer (pre-LN trains stably without warmup)."""

  d_model: int
  num_heads: int
  mlp_dim: int
  dropout: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, deterministic: bool):
    b, t, _ = x.shape
    head_dim = self.d_model // self.num_heads
    h = nn.LayerNorm(dtype=self.dtype, name="ln_attn")(x)
    qkv = nn.DenseGeneral((3, self.num_heads, head_dim), dtype=self.dtype, name="qkv")(h)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    o = ops.attention(q, k, v, mask)
    o = nn.DenseGeneral(self.d_model, axis=(-2, -1), dtype=self.dtype, name="out")(o)
    o = Dropout(self.dropout)(o, deterministic=deterministic)
    x = x + o
    h = nn.LayerNorm(dtype=self.dtype, name="ln_mlp")(x)
    h = nn.Dense(self.mlp_dim, dtype=self.dtype, name="mlp_in")(h)
    h = gelu(h)
    h = Dropout(self.dropout)(h, deterministic=deterministic)
    h = nn.Dense(self.d_model, dtype=self.dtype, name="mlp_out")(h)
    h = Dropout(self.dropout)(h, deterministic=deterministic)
    return x + h


def pool_frames(x: jax.Array, mask: jax.Array, how: str) -> jax.Array:
  """[B, T, D] -> [B, D] ("max") or [B, 2D] ("stats": mean, std), valid frames only;
  an utterance with no valid frame pools to zeros."""
  any_valid = mask.any(axis=1, keepdims=True)
  if how == "max":  # padding is pushed to the dtype's minimum so it can never win
    pooled = jnp.where(mask[..., None], x, jnp.finfo(x.dtype).min).max(axis=1)
    return jnp.where(any_valid, pooled, 0)
  if how == "stats":  # in fp32: a bf16 sum over a thousand frames loses the variance
    m = mask[..., None].astype(jnp.float32)
    n = jnp.maximum(m.sum(axis=1), 1.0)
    xf = x.astype(jnp.float32)
    mean = (xf * m).sum(axis=1) / n
    var = (jnp.square(xf - mean[:, None]) * m).sum(axis=1) / n
    pooled = jnp.concatenate([mean, jnp.sqrt(var + 1e-6)], axis=-1)
    return jnp.where(any_valid, pooled, 0).astype(x.dtype)
  raise ValueError(f"student.pooling must be 'max', 'stats' or 'mstats', got {how!r}")


def group_stats(pooled: jax.Array, group_size: int):
  """Mean and std of each block of `group_size` consecutive rows, repeated per row."""
  b, d = pooled.shape
  if b % group_size:
    raise ValueError(f"batch of {b} rows is not a whole number of speaker groups of "
                     f"{group_size}")
  g = pooled.astype(jnp.float32).reshape(b // group_size, group_size, d)
  mean, std = g.mean(axis=1, keepdims=True), g.std(axis=1, keepdims=True)
  rep = lambda a: jnp.broadcast_to(a, g.shape).reshape(b, d)
  return rep(mean), rep(std)


def speaker_pooled_stats(pooled: np.ndarray, speakers) -> tuple[np.ndarray, np.ndarray]:
  """Per row, the mean and std of the pooled vectors of all rows of its speaker."""
  speakers = np.asarray(speakers)
  mean, std = np.empty_like(pooled), np.empty_like(pooled)
  for s in np.unique(speakers):
    k = speakers == s
    mean[k], std[k] = pooled[k].mean(0), pooled[k].std(0)
  return mean, std


class Student(nn.Module):
  """Conv1D + Transformer speech emotion model.

  Returns (logits [B, C], hidden_states, frame_mask) where hidden_states[0] is the
  input of the first Transformer layer and hidden_states[i] the output of layer i
  (the same indexing as the teacher's, whose index 0 is its embeddings).
  """

  num_classes: int = 5
  conv_channels: Sequence[int] = (512, 512, 512, 512)
  conv_kernels: Sequence[int] = (5, 3, 3, 3)
  conv_strides: Sequence[int] = (1, 2, 1, 2)
  d_model: int = 512
  num_layers: int = 6
  num_heads: int = 4
  mlp_dim: int = 2048
  dropout: float = 0.1
  classifier_hidden: int = 256
  pooling: str = "max"  # paper: max over frames; "stats"/"mstats": mean and std
  input_stats: bool = False  # also pool the input features' mean and std
  speaker_norm: bool = False  # standardise the pooled vector per speaker (see above)
  max_frames: int = 4096
  dtype: Dtype = jnp.float32  # compute dtype (the precision policy's module dtype)

  @nn.compact
  def __call__(self, features: jax.Array, frame_mask: jax.Array, *, train: bool = False,
               group_size: int = 0, pooled_stats=None, pooled=None):
    deterministic = not train
    hidden, mask = [], None
    if pooled is None:  # else: the pooled vector of an earlier pass, only the head runs
      frame_mask = frame_mask.astype(bool)
      x, mask = ConvBlock(self.conv_channels, self.conv_kernels, self.conv_strides,
                          dtype=self.dtype, name="conv_block")(features, frame_mask)
      x = nn.Dense(self.d_model, dtype=self.dtype, name="proj")(x)
      levels = [x]  # "mstats": before the positions, which would shift every utterance alike
      t = x.shape[1]
      if t > self.max_frames:
        raise ValueError(f"{t} frames after downsampling exceed max_frames={self.max_frames}")
      x = x + jnp.asarray(sinusoidal_positions(t, self.d_model), self.dtype)[None]
      x = Dropout(self.dropout)(x, deterministic=deterministic)
      hidden = [x]
      for i in range(self.num_layers):
        x = EncoderLayer(self.d_model, self.num_heads, self.mlp_dim, self.dropout,
                         dtype=self.dtype, name=f"layer_{i + 1}")(x, mask, deterministic)
        hidden.append(x)
      x = nn.LayerNorm(dtype=self.dtype, name="ln_final")(x)
      if self.pooling == "mstats":
        levels += hidden[1:-1] + [x]
        pooled = jnp.concatenate([pool_frames(h, mask, "stats") for h in levels], axis=-1)
      else:
        pooled = pool_frames(x, mask, self.pooling)
      if self.input_stats:
        pooled = jnp.concatenate(
            [pooled, pool_frames(features.astype(pooled.dtype), frame_mask, "stats")], axis=-1)
      self.sow("intermediates", "pooled", pooled)  # the classifier's input (mced_jax.tools.probe)
    if self.speaker_norm and (group_size or pooled_stats is not None):
      # Without statistics (init, the first evaluation pass, distillation) the
      # classifier sees the raw pooled vector; its output is then not a prediction.
      mean, std = pooled_stats if pooled_stats is not None else group_stats(pooled, group_size)
      pooled = ((pooled.astype(jnp.float32) - mean) / (std + 1e-3)).astype(pooled.dtype)
    h = nn.Dense(self.classifier_hidden, dtype=self.dtype, name="fc_1")(pooled)
    h = nn.relu(h)
    h = Dropout(self.dropout)(h, deterministic=deterministic)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="fc_2")(h)
    return logits.astype(jnp.float32), hidden, mask


def pooled_vector(model: Student, params, x: jax.Array, m: jax.Array) -> jax.Array:
  """The classifier's input (the "pooled" intermediate) of x: a speaker_norm
  evaluation's first pass."""
  _, state = model.apply({"params": params}, x, m, mutable=["intermediates"])
  return state["intermediates"]["pooled"][0]


def head_probs(model: Student, params, pooled: jax.Array, pooled_stats) -> jax.Array:
  """Class probabilities from pooled vectors and their speaker's (mean, std): the
  classifier alone (a speaker_norm evaluation's second pass)."""
  logits = model.apply({"params": params}, None, None, pooled=pooled,
                       pooled_stats=pooled_stats)[0]
  return jax.nn.softmax(logits, -1)


def student_from_config(cfg, dtype=jnp.float32, **overrides) -> Student:
  """Builds the student from a `config.student` ConfigDict."""
  return Student(
      num_classes=cfg.num_classes,
      conv_channels=tuple(cfg.conv_channels),
      conv_kernels=tuple(cfg.conv_kernels),
      conv_strides=tuple(cfg.conv_strides),
      d_model=cfg.d_model,
      num_layers=cfg.num_layers,
      num_heads=cfg.num_heads,
      mlp_dim=cfg.mlp_dim,
      dropout=cfg.dropout,
      classifier_hidden=cfg.classifier_hidden,
      pooling=getattr(cfg, "pooling", "max"),  # exports from before the option: max
      input_stats=bool(getattr(cfg, "input_stats", False)),
      speaker_norm=bool(getattr(cfg, "speaker_norm", False)),
      dtype=dtype,
  ).clone(**overrides)
