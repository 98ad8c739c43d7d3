"""SYNTHETIC distillation pairs: random features and random token ids.

Not data. Used by tests and the throughput benchmark so that the step can run with
no corpus and no TensorFlow. Every batch is a pure function of (seed, step), so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np


class SyntheticPairs:
  """Random [B, T, feature_dim] features with random valid lengths and random
  [B, S] WordPiece-like ids ([CLS] ... [SEP] then padding 0)."""

  name = "synthetic"

  def __init__(self, global_batch: int, max_frames: int, max_tokens: int,
               vocab_size: int, feature_dim: int = 130, min_frames: int | None = None,
               min_tokens: int | None = None, seed: int = 0, cls_id: int = 101,
               sep_id: int = 102):
    self.global_batch = global_batch
    self.max_frames, self.max_tokens = max_frames, max_tokens
    self.min_frames = max_frames if min_frames is None else min_frames
    self.min_tokens = max_tokens if min_tokens is None else min_tokens
    if not 1 <= self.min_frames <= max_frames or not 3 <= self.min_tokens <= max_tokens:
      raise ValueError("synthetic lengths need 1 <= min_frames <= max_frames and "
                       "3 <= min_tokens <= max_tokens")
    self.vocab_size, self.feature_dim, self.seed = vocab_size, feature_dim, seed
    self.cls_id, self.sep_id = cls_id % vocab_size, sep_id % vocab_size

  def global_batch_at(self, step: int) -> dict:
    rng = np.random.default_rng([self.seed, step])
    b, t, s = self.global_batch, self.max_frames, self.max_tokens
    frames = rng.integers(self.min_frames, self.max_frames + 1, size=b)
    tokens = rng.integers(self.min_tokens, self.max_tokens + 1, size=b)
    frame_mask = np.arange(t)[None, :] < frames[:, None]
    feats = rng.standard_normal((b, t, self.feature_dim), dtype=np.float32)
    feats *= frame_mask[..., None]
    token_mask = np.arange(s)[None, :] < tokens[:, None]
    ids = rng.integers(1, self.vocab_size, size=(b, s), dtype=np.int32)
    ids[:, 0] = self.cls_id
    ids[np.arange(b), tokens - 1] = self.sep_id
    ids = np.where(token_mask, ids, 0).astype(np.int32)
    return {"features": feats, "frame_mask": frame_mask,
            "input_ids": ids, "attention_mask": token_mask.astype(np.int32)}
