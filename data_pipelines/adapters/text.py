"""Text corpora for the teacher.

* The 5-class **Teacher Text Emotion Dataset** (paper 3.1.1, Table 1): XED English
  + EmotionLines (Friends), classes neutral, happiness, surprise, sadness, anger.
  Recipe (matches Table 1's train counts within a few %): EmotionLines' official
  train/dev/test; a seeded 70/15/15 split of XED's annotated lines (by distinct text), each annotation
  of a multi-label line counted as one sample; XED's neutral lines de-duplicated and
  split the same way. joy -> happiness; XED anticipation/disgust/fear/trust and
  EmotionLines non-neutral/disgust/fear are dropped. Lines are split *before*
  expanding multi-labels, so one text never lands in two splits.
* One-sentence-per-line corpora for continued MLM pretraining.
"""

from __future__ import annotations

import json
import os

import numpy as np

from data_pipelines.tokenize import clean_text

CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger")
# Paper Table 1.
PAPER_TABLE1 = {
    "train": {"neutral": 10193, "happiness": 3285, "surprise": 2908, "sadness": 2111,
              "anger": 3175},
    "validation": {"neutral": 1270, "happiness": 419, "surprise": 389, "sadness": 287,
                   "anger": 481},
    "test": {"neutral": 2889, "happiness": 838, "surprise": 792, "sadness": 564,
             "anger": 921},
}
XED_LABELS = {1: "anger", 5: "happiness", 6: "sadness", 7: "surprise"}  # others dropped
EMOTIONLINES_LABELS = {"neutral": "neutral", "joy": "happiness", "surprise": "surprise",
                       "sadness": "sadness", "anger": "anger"}


def _split_of(n: int, seed: int, fractions=(0.7, 0.15, 0.15)) -> np.ndarray:
  """A seeded assignment of n items to 0/1/2 = train/validation/test."""
  perm = np.random.default_rng(seed).permutation(n)
  cut1 = int(round(fractions[0] * n))
  cut2 = cut1 + int(round(fractions[1] * n))
  out = np.empty(n, np.int8)
  out[perm[:cut1]], out[perm[cut1:cut2]], out[perm[cut2:]] = 0, 1, 2
  return out


SPLITS = ("train", "validation", "test")


def read_xed(xed_dir: str, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
  out = {s: [] for s in SPLITS}
  ann = os.path.join(xed_dir, "en-annotated.tsv")
  lines = []
  with open(ann, encoding="utf-8") as f:
    for i, line in enumerate(f, 1):
      line = line.rstrip("\n")
      if not line.strip():
        continue
      text, _, labels = line.rpartition("\t")
      try:
        ids = [int(x) for x in labels.replace(" ", "").split(",") if x]
      except ValueError as e:
        raise ValueError(f"{ann}:{i}: bad label field {labels!r}") from e
      text = clean_text(text)
      if text:
        lines.append((text, ids))
  # Split by distinct text: a line repeated in the file keeps all its annotations
  # in one split, so no text leaks from train into test.
  texts = list(dict.fromkeys(t for t, _ in lines))
  split_of_text = dict(zip(texts, _split_of(len(texts), seed)))
  for text, ids in lines:
    for k in ids:
      if k in XED_LABELS:
        out[SPLITS[split_of_text[text]]].append((text, XED_LABELS[k]))
  neu_path = os.path.join(xed_dir, "neu_en.txt")
  seen, neutral = set(texts), []  # a text annotated with an emotion is not neutral
  with open(neu_path, encoding="utf-8") as f:
    for line in f:
      line = line.rstrip("\n")
      if "\t" not in line:
        continue  # one known line lacks its label column
      _, text = line.split("\t", 1)
      text = clean_text(text)
      if text and text not in seen:
        seen.add(text)
        neutral.append(text)
  for text, s in zip(neutral, _split_of(len(neutral), seed + 1)):
    out[SPLITS[s]].append((text, "neutral"))
  return out


def read_emotionlines(el_dir: str) -> dict[str, list[tuple[str, str]]]:
  out = {}
  for split, name in (("train", "friends_train.json"), ("validation", "friends_dev.json"),
                      ("test", "friends_test.json")):
    path = os.path.join(el_dir, name)
    with open(path, encoding="utf-8") as f:
      dialogues = json.load(f)
    rows = []
    for dia in dialogues:
      for utt in dia:
        lab = EMOTIONLINES_LABELS.get(utt.get("emotion", "").strip().lower())
        text = clean_text(utt.get("utterance", ""))
        if lab and text:
          rows.append((text, lab))
    out[split] = rows
  return out


def teacher_text_dataset(xed_dir: str, el_dir: str, seed: int = 0):
  xed, el = read_xed(xed_dir, seed), read_emotionlines(el_dir)
  return {s: xed[s] + el[s] for s in SPLITS}


def class_counts(data) -> dict[str, dict[str, int]]:
  return {s: {c: sum(1 for _, l in rows if l == c) for c in CLASSES} for s, rows in data.items()}


def counts_table(data) -> str:
  """Our per-class counts beside the paper's Table 1, with the relative difference."""
  counts = class_counts(data)
  lines = ["| split | class | ours | paper | diff |", "|---|---|---|---|---|"]
  for s in SPLITS:
    for c in CLASSES:
      ours, paper = counts[s][c], PAPER_TABLE1[s][c]
      lines.append(f"| {s} | {c} | {ours} | {paper} | {100 * (ours - paper) / paper:+.1f} % |")
  return "\n".join(lines)


def write_jsonl(data, out_dir: str) -> None:
  """The splits as JSONL (a local directory or a URL: through mced_jax.runtime.fs);
  train.jsonl last, since its presence marks the dataset complete."""
  from mced_jax.runtime import fs  # pylint: disable=import-outside-toplevel
  fs.write_text(fs.join(out_dir, "counts.md"), counts_table(data) + "\n")
  for s in sorted(data, key=lambda k: k == "train"):
    fs.write_text(fs.join(out_dir, f"{s}.jsonl"), "".join(
        json.dumps({"text": text, "label": label}) + "\n" for text, label in data[s]))


def read_lines(paths, min_words: int = 1) -> list[str]:
  """One-sentence-per-line corpora (MLM): cleaned, non-empty, de-duplicated."""
  seen, out = set(), []
  for p in paths:
    with open(p, encoding="utf-8", errors="replace") as f:
      for line in f:
        t = clean_text(line)
        if t and len(t.split()) >= min_words and t not in seen:
          seen.add(t)
          out.append(t)
  return out


MELD_TO_TEACHER = {"neutral": "neutral", "joy": "happiness", "surprise": "surprise",
                   "sadness": "sadness", "anger": "anger"}


def demo_text_splits(manifest: str, out_dir: str) -> None:
  """train/validation/test.jsonl from the demo corpus's labelled transcripts."""
  import csv  # pylint: disable=import-outside-toplevel
  import io  # pylint: disable=import-outside-toplevel
  from mced_jax.runtime import fs  # pylint: disable=import-outside-toplevel
  rows = list(csv.DictReader(io.StringIO(fs.read_text(manifest), newline="")))
  write_jsonl({s: [(r["text"], r["label"]) for r in rows
                   if r["split"] == s and r["label"] in CLASSES] for s in SPLITS}, out_dir)


def ensure_teacher_text(out_dir: str, xed_dir: str, el_dir: str, seed: int,
                        demo_manifest: str | None = None) -> str:
  """The Teacher Text Emotion Dataset as JSONL in out_dir (built once); without the
  shared text corpora, the demo corpus's own transcripts (a plumbing demo)."""
  from mced_jax.runtime import fs  # pylint: disable=import-outside-toplevel
  if fs.exists(fs.join(out_dir, "train.jsonl")):
    return out_dir
  missing = [p for p in (xed_dir, el_dir) if not os.path.isdir(p)]
  if missing and demo_manifest and fs.exists(demo_manifest):
    from absl import logging  # pylint: disable=import-outside-toplevel
    logging.warning("teacher text: %s not found; using the demo corpus's own transcripts "
                    "instead (a plumbing demo)", missing)
    demo_text_splits(demo_manifest, out_dir)
  elif missing:
    raise FileNotFoundError(f"teacher text corpus {missing[0]} not found; set "
                            "--config.teacher_cls.xed_dir/emotionlines_dir or data_dir")
  else:
    write_jsonl(teacher_text_dataset(xed_dir, el_dir, seed), out_dir)
  return out_dir


def read_splits(data_dir: str, max_train: int = 0, max_eval: int = 0, seed: int = 0) -> dict:
  """{split: (texts, label ids)} from train/validation/test.jsonl; a positive cap
  keeps a seeded random subset (the files are sorted by text)."""
  from mced_jax.runtime import fs  # pylint: disable=import-outside-toplevel
  out = {}
  for split in SPLITS:
    path = fs.join(data_dir, f"{split}.jsonl")
    if not fs.exists(path):
      raise FileNotFoundError(f"{path} not found (expected train/validation/test.jsonl)")
    texts, labels = [], []
    for i, line in enumerate(fs.read_text(path).splitlines(), 1):
      if not line.strip():
        continue
      row = json.loads(line)
      if row["label"] not in CLASSES:
        raise ValueError(f"{path}:{i}: unknown label {row['label']!r}")
      texts.append(row["text"])
      labels.append(CLASSES.index(row["label"]))
    cap = max_train if split == "train" else max_eval
    if 0 < cap < len(texts):
      keep = np.sort(np.random.default_rng(seed).permutation(len(texts))[:cap])
      texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    out[split] = (texts, np.asarray(labels, np.int32))
  return out


def meld_test_text(path: str):
  """MELD test utterances whose emotion is one of the teacher's 5 classes."""
  import csv  # pylint: disable=import-outside-toplevel
  texts, labels = [], []
  with open(path, encoding="utf-8", errors="replace", newline="") as f:
    for row in csv.DictReader(f):
      lab = MELD_TO_TEACHER.get(row["Emotion"].strip().lower())
      if lab:
        texts.append(clean_text(row["Utterance"]))
        labels.append(CLASSES.index(lab))
  return texts, np.asarray(labels, np.int32)


def mlm_lines(text_files: str, emotionlines_dir: str = "", meld_train_csv: str = "",
              include_dialogue: bool = True, max_lines: int = 0) -> list[str]:
  """The continued-pretraining corpus: one-sentence-per-line files plus (optionally)
  the unlabelled dialogue text of EmotionLines/MELD *train* splits (no test text)."""
  files = [p for p in text_files.split(",") if p]
  for p in files:
    if not os.path.exists(p):
      raise FileNotFoundError(f"MLM corpus file {p} not found")
  lines = read_lines(files, min_words=2)
  if include_dialogue:
    if emotionlines_dir and os.path.isdir(emotionlines_dir):
      lines += [t for t, _ in read_emotionlines(emotionlines_dir)["train"]
                if len(t.split()) >= 2]
    if meld_train_csv and os.path.exists(meld_train_csv):
      import csv  # pylint: disable=import-outside-toplevel
      with open(meld_train_csv, encoding="utf-8", errors="replace", newline="") as f:
        lines += [t for t in (clean_text(r["Utterance"]) for r in csv.DictReader(f))
                  if len(t.split()) >= 2]
  lines = list(dict.fromkeys(lines))
  if max_lines > 0:
    lines = lines[:max_lines]
  if len(lines) < 20:
    raise ValueError(f"MLM corpus too small ({len(lines)} lines)")
  return lines


def main(argv):
  from absl import flags  # pylint: disable=import-outside-toplevel
  fv = flags.FlagValues()
  flags.DEFINE_string("xed", "../shared/data/text/xed", "XED directory", flag_values=fv)
  flags.DEFINE_string("emotionlines", "../shared/data/text/emotionlines_friends",
                      "EmotionLines (Friends) directory", flag_values=fv)
  flags.DEFINE_string("out", "data/teacher_text", "output directory (JSONL splits)",
                      flag_values=fv)
  flags.DEFINE_integer("seed", 0, "seed of the XED split", flag_values=fv)
  fv(list(argv))
  data = teacher_text_dataset(fv.xed, fv.emotionlines, fv.seed)
  write_jsonl(data, fv.out)
  print(counts_table(data))
  print(f"wrote {sum(len(v) for v in data.values())} examples to {fv.out}")


if __name__ == "__main__":
  import sys
  main(sys.argv)
