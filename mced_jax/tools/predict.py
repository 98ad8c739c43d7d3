"""Emotion prediction on audio files with a fine-tuned student.

    python -m mced_jax.tools.predict --checkpoint=runs/mced/finetune/model_mced clip.wav dir/ ...

A classifier trained with per-speaker standardisation (finetune.normalize=speaker)
standardises each speaker's files with their own statistics: one folder is one
speaker, or --speakers=map.csv (path,speaker) says who is who.

`--checkpoint` is an exported classifier (model.json + params.msgpack; the
finetune stage writes WORKDIR/finetune/model_mced and model_scratch), or a work dir
holding one. PATHs are audio files in any common format and sample rate (wav,
flac, ogg, mp3; mp4/m4a through ffmpeg) or directories searched recursively.
Prints one line per file and writes per-file class probabilities to --out
(.csv or .json). Unreadable, empty, silent or too-short files are reported and
skipped; the exit status is 1 only when no file could be scored.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import sys
import types

import numpy as np

from mced_jax.runtime import cli

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".au",
                    ".m4a", ".mp4", ".aac", ".webm")


def resolve_checkpoint(path: str) -> str:
  from mced_jax.models import export# pylint: disable=import-outside-toplevel
  from mced_jax.runtime import fs# pylint: disable=import-outside-toplevel
  for cand in (path, fs.join(path, "finetune", "model_mced"),
               fs.join(path, "model_mced"), fs.join(path, "finetune", "model_scratch")):
    if export.exists(cand):
      return cand
  raise FileNotFoundError(f"{path}: no exported classifier (model.json + params.msgpack) "
                          "there or in its finetune/ folder; run the finetune stage first")


def collect_files(paths) -> tuple[list[str], list[tuple[str, str]]]:
  """(audio files, [(path, reason)] for paths that do not exist)."""
  files, missing = [], []
  for p in paths:
    if os.path.isdir(p):
      for root, _, names in sorted(os.walk(p)):
        files += [os.path.join(root, n) for n in sorted(names)
                  if n.lower().endswith(AUDIO_EXTENSIONS)]
    elif os.path.exists(p):
      files.append(p)
    else:
      missing.append((p, "file not found"))
  return files, missing


class Predictor:
  """Features -> standardise -> student -> class probabilities."""

  def __init__(self, checkpoint: str, min_seconds: float = 0.25):
    import jax  # pylint: disable=import-outside-toplevel
    from mced_jax.models import export# pylint: disable=import-outside-toplevel
    from mced_jax.models import student as student_lib# pylint: disable=import-outside-toplevel
    self.dir = resolve_checkpoint(checkpoint)
    params, meta = export.load(self.dir)
    if meta.get("kind") != "emotion_classifier":
      raise ValueError(f"{self.dir}: a {meta.get('kind')!r} export, not a fine-tuned "
                       "classifier (use WORKDIR/finetune/model_mced)")
    s = meta["student"]
    self.classes = list(meta["classes"])
    # "fold": the training speakers' statistics (in the export); "speaker": each
    # speaker's own, computed here over that speaker's files.
    self.normalize = meta.get("normalize") or "fold"
    if self.normalize == "speaker":
      self.mean = self.std = None
    else:
      self.mean = np.asarray(meta["feature_mean"], np.float32)
      self.std = np.asarray(meta["feature_std"], np.float32)
    self.buckets = sorted(meta.get("frame_buckets") or [1000])
    self.min_seconds = min_seconds
    model = student_lib.student_from_config(
        types.SimpleNamespace(**{**s, "num_classes": len(self.classes)}))
    # A speaker_norm model also standardises its pooled representation per speaker:
    # a first pass over the speaker's files gives the statistics (as in evaluation).
    self.speaker_norm = model.speaker_norm
    self._params = jax.device_put(params)
    self._fn = jax.jit(lambda p, x, m: jax.nn.softmax(model.apply({"params": p}, x, m)[0], -1))
    self._head = jax.jit(functools.partial(student_lib.head_probs, model))
    self._pooled = jax.jit(functools.partial(student_lib.pooled_vector, model))
    self._extract = None

  def frames_for(self, n: int) -> int:
    """A bucket length (few compiled shapes); beyond the largest, multiples of it."""
    from data_pipelines.buckets import open_ended  # pylint: disable=import-outside-toplevel
    return open_ended(n, self.buckets)

  def features(self, path: str) -> np.ndarray:
    from data_pipelines import features as F  # pylint: disable=import-outside-toplevel
    if self._extract is None:
      self._extract = F.IS16Extractor()
    signal = F.load_audio(path)
    F.check_signal(path, signal, self.min_seconds)
    x = self._extract(signal)
    if x.shape[0] == 0:
      raise F.BadAudio(f"{path}: openSMILE produced no frames")
    return x

  def _inputs(self, x: np.ndarray, stats):
    mean, std = stats if stats is not None else (self.mean, self.std)
    if mean is None:
      raise ValueError("this classifier standardises each speaker with its own "
                       "statistics: give the speaker's (mean, std)")
    t = self.frames_for(len(x))
    feats = np.zeros((1, t, x.shape[1]), np.float32)
    feats[0, : len(x)] = (x - mean) / std
    mask = np.zeros((1, t), bool)
    mask[0, : len(x)] = True
    return feats, mask

  def pooled(self, x: np.ndarray, stats=None) -> np.ndarray:
    """The pooled representation of raw features x (the classifier's input)."""
    return np.asarray(self._pooled(self._params, *self._inputs(x, stats)))[0]

  def predict_features(self, x: np.ndarray, stats=None) -> np.ndarray:
    """Class probabilities of raw features x; `stats` = (mean, std) of x's speaker
    for a per-speaker model."""
    if self.speaker_norm:
      raise ValueError("this classifier standardises its representation per speaker: "
                       "score several files of each speaker together (predict_paths)")
    return np.asarray(self._fn(self._params, *self._inputs(x, stats)))[0]

  def predict_pooled(self, pooled: np.ndarray, pooled_stats) -> np.ndarray:
    """A speaker_norm classifier's probabilities from pooled vectors [N, P] and
    their speaker's (mean, std) per row."""
    return np.asarray(self._head(self._params, pooled, pooled_stats))

  def result(self, path: str, x: np.ndarray, stats=None, probs=None) -> dict:
    probs = self.predict_features(x, stats) if probs is None else probs
    return {"path": path, "seconds": round(len(x) / 100.0, 2),
            "prediction": self.classes[int(probs.argmax())],
            "probabilities": {c: float(p) for c, p in zip(self.classes, probs)}}

  def predict_file(self, path: str) -> dict:
    x = self.features(path)
    return self.result(path, x, speaker_stats([x]) if self.normalize == "speaker" else None)


def speaker_stats(xs) -> tuple[np.ndarray, np.ndarray]:
  """Frame-weighted (mean, std) over one speaker's raw features (as in training)."""
  from data_pipelines.standardize import frame_stats  # pylint: disable=import-outside-toplevel
  mean, std, _ = frame_stats(xs)
  return mean.astype(np.float32), std.astype(np.float32)


def read_speakers(path: str) -> dict:
  """CSV with columns path,speaker -> {absolute path: speaker}."""
  with open(path, encoding="utf-8", newline="") as f:
    rows = list(csv.DictReader(f))
  if not rows or not {"path", "speaker"} <= set(rows[0]):
    raise ValueError(f"{path}: a speaker map needs the columns path,speaker")
  return {os.path.abspath(r["path"]): r["speaker"] for r in rows}


def predict_paths(checkpoint: str, paths, progress: bool = True, speakers: str = ""):
  """(results, skipped [(path, reason)], classes) for files and directories.

  A per-speaker model ("speaker" normalisation) standardises each speaker's files
  with that speaker's statistics: speakers come from `speakers` (a path,speaker
  CSV), else each folder is one speaker."""
  from data_pipelines.features import BadAudio  # pylint: disable=import-outside-toplevel
  files, skipped = collect_files(paths)
  if not files and not skipped:
    raise FileNotFoundError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {paths}")
  pred = Predictor(checkpoint)
  spk = read_speakers(speakers) if speakers else {}
  feats = {}
  it = files
  if progress and len(files) > 1:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    it = tqdm(files, desc="features", unit="file", file=sys.stderr)
  for f in it:
    try:
      feats[f] = pred.features(f)
    except (BadAudio, OSError, RuntimeError, ValueError) as e:
      skipped.append((f, str(e)))
  groups = {}
  for f in feats:
    key = spk.get(os.path.abspath(f), os.path.dirname(os.path.abspath(f)))
    groups.setdefault(key, []).append(f)
  stats = {}
  if pred.normalize == "speaker":
    for key, members in groups.items():
      stats.update(dict.fromkeys(members, speaker_stats([feats[f] for f in members])))
    small = [k for k, m in groups.items() if len(m) < 5]
    if small:
      print(f"note: {len(small)} speaker(s) have fewer than 5 files; their statistics are "
            "noisy (per-speaker model)", file=sys.stderr)
  probs = {}
  if pred.speaker_norm:  # every file's pooled vector, then its speaker's statistics
    from mced_jax.models.student import speaker_pooled_stats  # pylint: disable=import-outside-toplevel
    for key, members in groups.items():
      if len(members) < 2:
        skipped += [(f, "a speaker_norm classifier needs several files of the speaker "
                     "(one folder per speaker, or --speakers)") for f in members]
        continue
      pooled = np.stack([pred.pooled(feats[f], stats.get(f)) for f in members])
      st = speaker_pooled_stats(pooled, [key] * len(members))
      probs.update(zip(members, pred.predict_pooled(pooled, st)))
  results = []
  for f, x in feats.items():
    if pred.speaker_norm and f not in probs:
      continue
    try:
      results.append(pred.result(f, x, stats.get(f), probs.get(f)))
    except (RuntimeError, ValueError) as e:
      skipped.append((f, str(e)))
  return results, skipped, pred.classes


def write_results(results, skipped, classes, out: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  if out.endswith(".json"):
    with open(out, "w", encoding="utf-8") as f:
      json.dump({"classes": classes, "predictions": results,
                 "skipped": [{"path": p, "reason": r} for p, r in skipped]}, f, indent=1)
    return
  with open(out, "w", encoding="utf-8", newline="") as f:
    w = csv.writer(f)
    w.writerow(["path", "prediction", "seconds"] + [f"p_{c}" for c in classes] + ["error"])
    for r in results:
      w.writerow([r["path"], r["prediction"], r["seconds"]] +
                 [f"{r['probabilities'][c]:.4f}" for c in classes] + [""])
    for p, reason in skipped:
      w.writerow([p, "", ""] + [""] * len(classes) + [reason])


def _flags():
  from absl import flags  # pylint: disable=import-outside-toplevel
  fv = flags.FlagValues()
  flags.DEFINE_string("checkpoint", None, "exported classifier dir "
                      "(WORKDIR/finetune/model_mced) or a work dir", flag_values=fv)
  flags.DEFINE_string("out", "predictions.csv", "output file, .csv or .json", flag_values=fv)
  flags.DEFINE_string("speakers", "", "CSV path,speaker for a per-speaker model (default: "
                      "one speaker per folder)", flag_values=fv)
  return fv


def main(argv) -> int:
  """argv: [program, --checkpoint=DIR, --out=FILE, PATH ...] (absl flag syntax)."""
  fv = _flags()
  usage = "usage: python -m mced_jax.tools.predict --checkpoint=DIR [--out=FILE] PATH ..."
  paths = cli.parse(fv, argv, usage, __doc__)
  if not fv.checkpoint or not paths:
    print(usage, file=sys.stderr)
    return 2
  try:
    results, skipped, classes = predict_paths(fv.checkpoint, paths, speakers=fv.speakers)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  width = max([len(r["path"]) for r in results] + [10])
  for r in results:
    top = ", ".join(f"{c} {p:.2f}" for c, p in sorted(r["probabilities"].items(),
                                                       key=lambda kv: -kv[1])[:3])
    print(f"{r['path']:<{width}}  {r['prediction']:<10}  ({top})")
  for p, reason in skipped:
    print(f"skipped: {reason}" if p in reason else f"skipped {p}: {reason}", file=sys.stderr)
  write_results(results, skipped, classes, fv.out)
  print(f"{len(results)} file(s) scored, {len(skipped)} skipped; wrote {fv.out}",
        file=sys.stderr)
  return 0 if results else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv))
