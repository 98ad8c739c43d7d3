"""openSMILE IS16 (ComParE_2016) low-level descriptors for the student.

65 LLDs + 65 deltas = 130 dims at 100 frames/s, from 16 kHz mono audio. openSMILE
returns 2 more delta frames than LLD frames; both are cut to the shorter length
before concatenation (the frames line up from the start: both sinks begin at t=0).

`extract_many` runs over processes with a progress bar, caches one .npy per
utterance (atomic writes, so an interrupted run resumes where it stopped), skips
and reports bad audio, and reports the real-time factor.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import subprocess
import time
from typing import Sequence

import numpy as np

SAMPLE_RATE = 16000
FEATURE_DIM = 130
FRAME_RATE = 100  # frames per second (10 ms hop)


class BadAudio(ValueError):
  """An audio file we cannot use; the message names the file and the reason."""


def load_audio(path: str, target_sr: int = SAMPLE_RATE) -> np.ndarray:
  """Reads any soundfile-readable file (wav, flac, ogg, mp3 ...) or, through ffmpeg,
  a video/audio container (mp4, m4a); returns float32 mono at `target_sr`. A URL
  (gs://, ...) is read through mced_jax.runtime.fs (Beam workers read corpora in
  buckets)."""
  from mced_jax.runtime import fs  # pylint: disable=import-outside-toplevel
  url = fs.is_url(path) and not fs.is_local(path)
  if not (fs.exists(path) if url else os.path.exists(path)):
    raise BadAudio(f"{path}: file not found")
  ext = os.path.splitext(path)[1].lower()
  if ext in (".mp4", ".m4a", ".mkv", ".avi", ".webm", ".aac"):
    if url:
      raise BadAudio(f"{path}: containers at a URL are not decoded; copy them locally or "
                     "convert them to an audio format first")
    signal, sr = _decode_with_ffmpeg(path, target_sr)
  else:
    import io  # pylint: disable=import-outside-toplevel
    import soundfile as sf  # pylint: disable=import-outside-toplevel
    try:
      source = io.BytesIO(fs.read_bytes(path)) if url else path
      signal, sr = sf.read(source, dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - libsndfile raises several types
      raise BadAudio(f"{path}: unreadable audio ({type(e).__name__}: {e})") from e
    signal = signal.mean(axis=1)  # mixdown to mono
  if signal.size == 0:
    raise BadAudio(f"{path}: empty audio (0 samples)")
  if not np.isfinite(signal).all():
    raise BadAudio(f"{path}: audio contains NaN or Inf samples")
  if sr != target_sr:
    import audresample  # pylint: disable=import-outside-toplevel
    signal = audresample.resample(signal.astype(np.float32), sr, target_sr)[0]
  return np.ascontiguousarray(signal, dtype=np.float32)


def _decode_with_ffmpeg(path: str, target_sr: int):
  from shutil import which  # pylint: disable=import-outside-toplevel
  if which("ffmpeg") is None:
    raise BadAudio(f"{path}: decoding {os.path.splitext(path)[1]} needs ffmpeg, which is "
                   "not installed (apt-get install ffmpeg), or convert the clips to wav")
  proc = subprocess.run(
      ["ffmpeg", "-nostdin", "-v", "error", "-i", path, "-vn", "-ac", "1", "-ar",
       str(target_sr), "-f", "f32le", "-"], capture_output=True, check=False)
  if proc.returncode != 0:
    raise BadAudio(f"{path}: ffmpeg could not decode it: {proc.stderr.decode()[-300:]}")
  return np.frombuffer(proc.stdout, np.float32), target_sr


def check_signal(path: str, signal: np.ndarray, min_seconds: float,
                 silence_rms: float = 1e-4) -> float:
  """Returns the duration in seconds or raises BadAudio (too short, silent)."""
  seconds = signal.size / SAMPLE_RATE
  if seconds < min_seconds:
    raise BadAudio(f"{path}: too short ({seconds:.2f} s < {min_seconds} s)")
  if float(np.sqrt(np.mean(signal.astype(np.float64) ** 2))) < silence_rms:
    raise BadAudio(f"{path}: silent (RMS below {silence_rms})")
  return seconds


class IS16Extractor:
  """Callable: 16 kHz mono float32 signal -> [T, 130] float32 features.

  One openSMILE run feeds two external sinks (the package's own multi-output sink
  config, pointed at the `lld` and `lld_de` levels of ComParE_2016), so the
  config runs once per file instead of once per level: about twice as fast as two
  `opensmile.Smile` passes, with identical numbers (tests check this).
  """

  def __init__(self):
    import opensmile  # pylint: disable=import-outside-toplevel
    from opensmile.core.config import config as smile_cfg  # pylint: disable=import-outside-toplevel
    root = os.path.join(os.path.dirname(opensmile.__file__), "core", smile_cfg.CONFIG_ROOT)
    self._config_file = os.path.join(
        root, opensmile.FeatureSet.ComParE_2016.value + smile_cfg.CONFIG_EXT)
    self._options = {
        "source": os.path.join(root, smile_cfg.EXTERNAL_INPUT_CONFIG),
        "sink": os.path.join(root, smile_cfg.EXTERNAL_OUTPUT_MULTI_CONFIG),
        "sinkLevelLLD": "lld", "sinkLevelFunc": "lld_de",
        "bufferModeRbConf": os.path.join(root, "shared", "BufferModeRb.conf.inc"),
        "frameModeFunctionalsConf": os.path.join(root, "shared",
                                                 "FrameModeFunctionals.conf.inc"),
        "nBits": 16,
    }
    self._source = smile_cfg.EXTERNAL_SOURCE_COMPONENT

  def __call__(self, signal: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    from opensmile.core.lib import OpenSMILE  # pylint: disable=import-outside-toplevel
    pcm = (np.clip(signal, -1.0, 1.0 - 1.0 / 32768) * 32768).astype(np.int16)
    lld, de = [], []
    smile = OpenSMILE()
    smile.initialize(config_file=self._config_file,
                     options=dict(self._options, sampleRate=sr), loglevel=0)
    try:
      smile.external_sink_set_callback_ex("extsinklld", lambda d, m: lld.append(d.copy()))
      smile.external_sink_set_callback_ex("extsinkfunc", lambda d, m: de.append(d.copy()))
      smile.external_audio_source_write_data(self._source, pcm.tobytes())
      smile.external_audio_source_set_eoi(self._source)
      smile.run()
    finally:
      smile.free()
    if not lld or not de:
      return np.zeros((0, FEATURE_DIM), np.float32)
    lld, de = np.concatenate(lld, 0), np.concatenate(de, 0)
    n = min(len(lld), len(de))  # the delta sink yields 2 more frames
    feats = np.concatenate([lld[:n], de[:n]], axis=1).astype(np.float32)
    if feats.shape[1] != FEATURE_DIM:
      raise RuntimeError(f"openSMILE returned {feats.shape[1]} dims, expected {FEATURE_DIM}")
    return feats


@dataclasses.dataclass
class ExtractionReport:
  ok: dict  # utt_id -> {"frames": int, "seconds": float}
  skipped: dict  # utt_id -> reason
  audio_seconds: float
  wall_seconds: float
  workers: int

  @property
  def rtf_per_core(self) -> float:
    """Seconds of audio processed per second of one core's time."""
    busy = self.wall_seconds * self.workers
    return self.audio_seconds / busy if busy > 0 else float("nan")

  def summary(self) -> str:
    return (f"features: {len(self.ok)} ok, {len(self.skipped)} skipped; "
            f"{self.audio_seconds / 60:.1f} min of audio in {self.wall_seconds:.1f} s on "
            f"{self.workers} worker(s): {self.rtf_per_core:.0f}x real time per core, "
            f"{self.audio_seconds / max(self.wall_seconds, 1e-9):.0f}x overall")

  def write(self, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
      json.dump({"ok": len(self.ok), "skipped": self.skipped,
                 "audio_seconds": self.audio_seconds, "wall_seconds": self.wall_seconds,
                 "workers": self.workers, "rtf_per_core": self.rtf_per_core}, f, indent=1)


_WORKER = {}


def _init_worker(min_seconds):
  _WORKER["extractor"] = IS16Extractor()
  _WORKER["min_seconds"] = min_seconds


def _extract_one(job):
  utt_id, path, out_path = job
  t0 = time.perf_counter()
  try:
    signal = load_audio(path)
    seconds = check_signal(path, signal, _WORKER["min_seconds"])
    feats = _WORKER["extractor"](signal)
    if feats.shape[0] == 0:
      raise BadAudio(f"{path}: openSMILE produced no frames")
    if not np.isfinite(feats).all():
      raise BadAudio(f"{path}: features contain NaN/Inf")
    tmp = out_path + ".tmp.npy"
    np.save(tmp, feats)
    os.replace(tmp, out_path)
    return utt_id, {"frames": int(feats.shape[0]), "seconds": seconds}, None, time.perf_counter() - t0
  except BadAudio as e:
    return utt_id, None, str(e), time.perf_counter() - t0
  except Exception as e:  # noqa: BLE001 - one broken file must not stop the batch
    return utt_id, None, f"{path}: {type(e).__name__}: {e}", time.perf_counter() - t0


def feature_path(cache_dir: str, utt_id: str) -> str:
  from mced_jax.runtime import fs  # pylint: disable=import-outside-toplevel
  safe = utt_id.replace("/", "__")
  return fs.join(cache_dir, safe + ".npy")


def load_cached(cache_dir: str, utt_id: str) -> np.ndarray:
  """A cached utterance's features (the cache may be at a URL)."""
  path = feature_path(cache_dir, utt_id)
  from mced_jax.runtime import fs  # pylint: disable=import-outside-toplevel
  if fs.is_url(path) and not fs.is_local(path):
    import io  # pylint: disable=import-outside-toplevel
    return np.load(io.BytesIO(fs.read_bytes(path)))
  return np.load(path)


DURATIONS = "durations.jsonl"  # utt_id -> audio seconds of the cached features


def _read_durations(cache_dir: str) -> dict:
  path, out = os.path.join(cache_dir, DURATIONS), {}
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      for line in f:
        try:
          d = json.loads(line)
          out[d["utt_id"]] = float(d["seconds"])
        except (ValueError, KeyError, TypeError):
          continue
  return out


def audio_seconds(path: str, frames: int) -> float:
  """The duration of an audio file from its header, as the pair filter measured it
  at extraction (samples / rate); frames / 100 only when the header is unreadable.
  Frames alone run ~0.05 s short (openSMILE's window), which would move pairs
  across the filter's thresholds between a first run and a cached re-run."""
  try:
    import soundfile as sf  # pylint: disable=import-outside-toplevel
    info = sf.info(path)
    if info.frames > 0 and info.samplerate > 0:
      return info.frames / info.samplerate
  except Exception:  # noqa: BLE001 - containers soundfile cannot open (mp4 ...)
    pass
  return frames / FRAME_RATE


def extract_many(items: Sequence[tuple[str, str]], cache_dir: str, num_workers: int = 0,
                 min_seconds: float = 0.5, progress: bool = True) -> ExtractionReport:
  """Extracts features for (utt_id, audio_path) items into `cache_dir`.

  Cached utterances are not recomputed (their frame count is read from the .npy
  header, their duration from `durations.jsonl` beside them), so a re-run after an
  interruption only does the rest and filters on the same durations.
  """
  os.makedirs(cache_dir, exist_ok=True)
  num_workers = num_workers or max(1, os.cpu_count() or 1)
  known = _read_durations(cache_dir)
  ok, skipped, jobs = {}, {}, []
  for utt_id, path in items:
    out = feature_path(cache_dir, utt_id)
    if os.path.exists(out):
      frames = np.load(out, mmap_mode="r").shape[0]
      seconds = known.get(utt_id)
      if seconds is None:  # a cache written before durations were recorded
        seconds = audio_seconds(path, frames)
      ok[utt_id] = {"frames": int(frames), "seconds": seconds, "cached": True}
    else:
      jobs.append((utt_id, path, out))
  audio_s, t0 = 0.0, time.perf_counter()
  bar = None
  if progress and jobs:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm(total=len(jobs), desc="IS16 features", unit="file", dynamic_ncols=True)
  if jobs:
    if num_workers == 1:
      _init_worker(min_seconds)
      results = map(_extract_one, jobs)
      pool = None
    else:
      pool = mp.get_context("spawn").Pool(num_workers, _init_worker, (min_seconds,))
      results = pool.imap_unordered(_extract_one, jobs, chunksize=4)
    # Appended by this process only, after each .npy landed; a torn last line from
    # a killed run is ignored on reading.
    log = open(os.path.join(cache_dir, DURATIONS), "a", encoding="utf-8")  # pylint: disable=consider-using-with
    try:
      for utt_id, info, err, _ in results:
        if err is None:
          ok[utt_id] = info
          audio_s += info["seconds"]
          log.write(json.dumps({"utt_id": utt_id, "seconds": info["seconds"]}) + "\n")
          log.flush()
        else:
          skipped[utt_id] = err
        if bar is not None:
          bar.update(1)
    finally:
      log.close()
      if pool is not None:
        pool.close()
        pool.join()
      if bar is not None:
        bar.close()
  return ExtractionReport(ok, skipped, audio_s, time.perf_counter() - t0,
                          num_workers if jobs else 0)

