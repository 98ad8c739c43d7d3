"""Small audio fixtures written by the tests themselves."""

import os

import numpy as np
import soundfile as sf


def voiced(seconds: float, sr: int = 16000, f0: float = 140.0, seed: int = 0,
           channels: int = 1) -> np.ndarray:
  """A speech-like signal: harmonics of a wobbling f0, syllable-rate envelope, noise."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * sr)) / sr
  f = f0 * (1 + 0.1 * np.sin(2 * np.pi * 3 * t))
  phase = 2 * np.pi * np.cumsum(f) / sr
  x = sum(np.sin(k * phase) / k for k in range(1, 8))
  x *= 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
  x = 0.2 * x / np.abs(x).max() + 0.01 * rng.standard_normal(t.size)
  x = x.astype(np.float32)
  return np.stack([x] * channels, 1) if channels > 1 else x


def write_wav(path: str, seconds: float, sr: int = 16000, seed: int = 0, channels: int = 1,
              f0: float = 140.0) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  sf.write(path, voiced(seconds, sr, f0, seed, channels), sr)
  return path


def write_corrupt(path: str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(b"RIFF\x24\x00\x00\x00WAVEfmt this is not audio at all" * 3)
  return path


def demo_in_both_formats(root, per_class_per_voice: int = 1, **options) -> dict:
  """The espeak demo corpus prepared as ArrayRecord and as TFRecord: {format: dir}."""
  from data_pipelines import demo
  from data_pipelines.adapters import read_manifest
  from data_pipelines.prepare import PrepareOptions, prepare
  manifest = demo.generate(str(root / "corpus"), per_class_per_voice=per_class_per_voice,
                           progress=False)
  out = {}
  for fmt in ("array_record", "tfrecord"):
    out[fmt] = str(root / fmt)
    prepare(read_manifest(manifest), out[fmt], PrepareOptions(
        name="demo", progress=False, filter_pairs=True, file_format=fmt, **options))
  return out
