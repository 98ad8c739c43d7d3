"""Small helpers shared by tests."""

import numpy as np


def pad_batch(batch: dict, extra_frames: int, extra_tokens: int, rng=None) -> dict:
  """Appends padding to every sequence. Padded feature frames are filled with
  large random garbage (not zeros) so that any leak of padding would show."""
  rng = rng or np.random.default_rng(123)
  b, t, f = batch["features"].shape
  feats = np.concatenate(
      [batch["features"], 1e3 * rng.standard_normal((b, extra_frames, f)).astype(np.float32)], 1)
  fmask = np.concatenate([batch["frame_mask"], np.zeros((b, extra_frames), bool)], 1)
  # Garbage also in the already padded region of the original batch.
  feats = np.where(fmask[..., None], feats, 1e3).astype(np.float32)
  ids = np.concatenate([batch["input_ids"], np.zeros((b, extra_tokens), np.int32)], 1)
  am = np.concatenate([batch["attention_mask"], np.zeros((b, extra_tokens), np.int32)], 1)
  return {"features": feats, "frame_mask": fmask, "input_ids": ids, "attention_mask": am}
