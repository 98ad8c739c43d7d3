"""The demo corpus: emotional sentences we wrote, spoken by espeak-ng.

A PLUMBING DEMO, NOT EVIDENCE OF ACCURACY: synthetic speech whose "emotion" is a
prosody preset (rate, pitch, pitch range, voice) that we chose per class. It lets
the whole pipeline run on a fresh machine with no download.

Sentences come from small per-class templates (opening x reason), so every class
has distinct, emotion-bearing wording for the text teacher and a class-specific
prosody for the student. Six voices (espeak-ng variants) act as speakers: four for
train, one for validation, one for test. Output: `wavs/*.wav` (22.05 kHz) and
`manifest.csv` (audio, text, label, speaker, split), generated deterministically;
a re-run keeps the files already written.

Speech comes from the espeak-ng C library shipped in the `espeakng-loader` wheel,
called through ctypes.
"""

from __future__ import annotations

import csv
import ctypes
import itertools
import multiprocessing as mp
import os
import wave

import numpy as np

CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger")

TEMPLATES = {
    "neutral": (
        ["The meeting is scheduled for", "The report will be ready by",
         "The train usually leaves at", "The store opens again on",
         "My appointment was moved to", "The package should arrive on"],
        ["nine in the morning.", "the end of the week.", "Tuesday afternoon.",
         "the first of next month.", "half past four.", "the usual time."]),
    "happiness": (
        ["I am so happy that", "What a wonderful day, because", "I love it that",
         "This is the best news ever,", "I am thrilled and grateful that",
         "We are celebrating tonight because"],
        ["we finally won the championship!", "you are coming home for the holidays!",
         "our little garden is blooming!", "my sister got the job she wanted!",
         "everyone made it to the party!", "the whole family is together again!"]),
    "surprise": (
        ["Wait, are you serious,", "No way, I can not believe", "Oh my goodness,",
         "What? Really? You mean", "I never expected that", "Wow, who would have guessed"],
        ["the old house was sold overnight?", "you ran an entire marathon?",
         "the cat opened the fridge by itself?", "our teacher is a famous singer?",
         "the package came from the other side of the world?", "it snowed in the desert?"]),
    "sadness": (
        ["I feel so lonely since", "It breaks my heart that", "I miss them terribly now that",
         "Nothing feels the same since", "I cried all night because", "I am so sorry that"],
        ["my grandfather passed away.", "our old dog is gone.", "my best friend moved away.",
         "we lost everything in the fire.", "nobody came to say goodbye.",
         "the letters stopped coming."]),
    "anger": (
        ["I am furious that", "This is outrageous, because", "How dare you, after",
         "I have had enough, since", "Stop lying to me, you know", "I am sick and tired that"],
        ["you broke your promise again!", "they cheated us out of our money!",
         "you read my private letters!", "nobody ever listens to a word I say!",
         "you wrecked my car and walked away!", "they blamed me for their mistakes!"]),
}

# Prosody per class: espeak rate (words/min), pitch (0-99), pitch range (0-99),
# volume (0-200). Chosen to mirror the usual acoustic correlates: sadness slow,
# low, flat; anger fast, loud; happiness/surprise high and wide.
PROSODY = {
    "neutral": dict(rate=165, pitch=45, range=35, volume=100),
    "happiness": dict(rate=190, pitch=70, range=85, volume=120),
    "surprise": dict(rate=175, pitch=82, range=99, volume=115),
    "sadness": dict(rate=120, pitch=28, range=8, volume=70),
    "anger": dict(rate=205, pitch=42, range=60, volume=170),
}
# "flat": every class spoken with the neutral preset -- the control in which the
# audio no longer carries the class, only the words do (docs/experiments).
PROSODY_MODES = ("class", "flat")
# Variants without espeak's "breath" noise, which is not reproducible run to run.
VOICES = ("en-us+m1", "en-us+f1", "en-us+m3", "en-us+belinda", "en-us+m7", "en-us+f4")
SPLIT_OF_VOICE = {"en-us+m1": "train", "en-us+f1": "train", "en-us+m3": "train",
                  "en-us+belinda": "train", "en-us+m7": "validation", "en-us+f4": "test"}

_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_SYNCHRONOUS, _POS_CHARACTER, _CHARS_UTF8 = 2, 1, 1
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.c_void_p)


class Espeak:
  """Minimal ctypes binding of libespeak-ng's synchronous synthesis."""

  def __init__(self):
    try:
      import espeakng_loader  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise RuntimeError("the demo corpus needs the 'espeakng-loader' package "
                         "(pip install espeakng-loader==0.2.4)") from e
    self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
    data_parent = os.path.dirname(espeakng_loader.get_data_path())
    self.sample_rate = self.lib.espeak_Initialize(_SYNCHRONOUS, 0, data_parent.encode(), 0)
    if self.sample_rate <= 0:
      raise RuntimeError(f"espeak_Initialize failed ({self.sample_rate})")
    self._chunks: list[np.ndarray] = []

    def collect(wav, n, _events):
      if n > 0:
        self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
      return 0

    self._cb = _CALLBACK(collect)  # keep a reference: ctypes must not free it
    self.lib.espeak_SetSynthCallback(self._cb)

  def say(self, text: str, voice: str, rate: int, pitch: int, range_: int,
          volume: int) -> np.ndarray:
    if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
      raise RuntimeError(f"espeak-ng has no voice {voice!r}")
    for key, val in ((_RATE, rate), (_PITCH, pitch), (_RANGE, range_), (_VOLUME, volume)):
      self.lib.espeak_SetParameter(key, int(val), 0)
    self._chunks = []
    data = text.encode("utf-8")
    self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    self.lib.espeak_Synchronize()
    return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def sentences(per_class: int) -> dict[str, list[str]]:
  out = {}
  for c, (openers, reasons) in TEMPLATES.items():
    pairs = list(itertools.product(openers, reasons))
    rng = np.random.default_rng(CLASSES.index(c))
    order = rng.permutation(len(pairs))[:per_class]
    out[c] = [f"{pairs[i][0]} {pairs[i][1]}" for i in order]
  return out


def _speak_job(j: dict) -> str:
  engine = Espeak()
  pcm = engine.say(j["text"], j["voice"], j["rate"], j["pitch"], j["range"], j["volume"])
  tmp = j["path"] + ".tmp"
  with wave.open(tmp, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(engine.sample_rate)
    w.writeframes(pcm.astype("<i2").tobytes())
  os.replace(tmp, j["path"])
  return j["path"]


def jobs(per_class_per_voice: int = 12, seed: int = 0, prosody: str = "class") -> list[dict]:
  """What `generate` speaks: id, text, label, speaker, split and espeak settings
  per utterance. `prosody="flat"` changes the settings only (same draws, same
  texts and voices): every class gets the neutral preset."""
  if prosody not in PROSODY_MODES:
    raise ValueError(f"demo prosody {prosody!r}; known: {', '.join(PROSODY_MODES)}")
  n_sent = per_class_per_voice * len(VOICES)
  texts = sentences(min(n_sent, 36))
  rng = np.random.default_rng(seed)
  out = []
  for v_idx, voice in enumerate(VOICES):
    for c in CLASSES:
      for k in range(per_class_per_voice):
        text = texts[c][(v_idx * per_class_per_voice + k) % len(texts[c])]
        p = PROSODY[c if prosody == "class" else "neutral"]
        jitter = rng.normal(size=3)  # small per-utterance variation, seeded
        out.append({
            "id": f"{voice.replace('+', '_').replace('-', '')}_{c}_{k:02d}", "text": text,
            "label": c, "speaker": voice, "split": SPLIT_OF_VOICE[voice], "voice": voice,
            "rate": int(p["rate"] + 8 * jitter[0]),
            "pitch": int(np.clip(p["pitch"] + 4 * jitter[1], 0, 99)),
            "range": int(np.clip(p["range"] + 4 * jitter[2], 0, 99)), "volume": p["volume"]})
  return out


def generate(out_dir: str, per_class_per_voice: int = 12, seed: int = 0,
             progress: bool = True, workers: int = 0, prosody: str = "class") -> str:
  """Writes the corpus; returns the manifest path. 5 classes x 6 voices x N."""
  jobs_ = jobs(per_class_per_voice, seed, prosody)
  os.makedirs(os.path.join(out_dir, "wavs"), exist_ok=True)
  todo = []
  for j in jobs_:
    j["path"] = os.path.join(out_dir, "wavs", j["id"] + ".wav")
    if not os.path.exists(j["path"]):
      todo.append(j)
  bar = None
  if progress and todo:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm(total=len(todo), desc="demo corpus (espeak-ng)", unit="utt")
  if todo:
    # espeak-ng carries state from one utterance into the next (its output for the
    # same text drifts by a few samples), so each utterance is spoken by a fresh
    # process forked from a clean fork server: the corpus is then byte-identical
    # whatever the order, the worker count, or an interrupted earlier run.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["data_pipelines.demo"])
    with ctx.Pool(workers or os.cpu_count() or 1, maxtasksperchild=1) as pool:
      for _ in pool.imap_unordered(_speak_job, todo):
        if bar is not None:
          bar.update(1)
  if bar is not None:
    bar.close()
  manifest = os.path.join(out_dir, "manifest.csv")
  with open(manifest, "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=["id", "audio", "text", "label", "speaker", "split"])
    w.writeheader()
    for j in jobs_:
      w.writerow({"id": j["id"], "audio": f"wavs/{j['id']}.wav", "text": j["text"],
                  "label": j["label"], "speaker": j["speaker"], "split": j["split"]})
  return manifest


def main(argv) -> str:
  from absl import flags  # pylint: disable=import-outside-toplevel
  fv = flags.FlagValues()
  flags.DEFINE_string("out", "runs/demo_corpus", "output directory", flag_values=fv)
  flags.DEFINE_integer("per_class_per_voice", 12, "sentences per class and voice",
                       flag_values=fv)
  flags.DEFINE_enum("prosody", "class", PROSODY_MODES, "class: a prosody preset per class; "
                    "flat: the neutral preset for every class (a control)", flag_values=fv)
  fv(list(argv))
  path = generate(fv.out, fv.per_class_per_voice, prosody=fv.prosody)
  print(f"wrote {path}")
  return path


if __name__ == "__main__":
  import sys  # pylint: disable=ungrouped-imports
  main(sys.argv)
