"""Metric logging: JSON lines in the work dir (process 0 only) and the console."""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np


def _plain(v):
  if isinstance(v, (np.ndarray, jax.Array)):
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v.tolist()
  if isinstance(v, (np.floating, np.integer)):
    return v.item()
  return v


class MetricWriter:
  """Appends one JSON object per logged step to `<workdir>/<name>.jsonl`."""

  def __init__(self, workdir: str, name: str = "metrics"):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, f"{name}.jsonl")
    if self.active:
      os.makedirs(workdir, exist_ok=True)

  def write(self, step: int, scalars: dict) -> None:
    if not self.active:
      return
    rec = {"step": int(step), "time": time.time()}
    rec.update({k: _plain(v) for k, v in scalars.items()})
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(rec) + "\n")


def read_jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
