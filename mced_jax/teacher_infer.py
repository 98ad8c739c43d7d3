"""Teacher inference: batched logits (+ selected hidden states) for texts, and a CLI
that labels a text file or a pair manifest.

    python -m mced_jax.teacher_infer --teacher=runs/mced/teacher_cls/model \\
        --input=pairs.csv --threshold=0.6 --out=runs/labelled.csv

For a manifest (CSV/JSONL with a `text` column) every row gets the teacher's label
and confidence; with --threshold, `<out>` keeps only the emotion-salient rows
(max probability >= threshold), as the paper did to build EmoATMovie (3.1.2), and
`<out stem>.all.csv` holds every row.
"""

from __future__ import annotations

import csv
import json
import os
import sys

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class TeacherInference:
  """A fine-tuned teacher directory, ready to score texts."""

  def __init__(self, teacher_dir: str, batch_size: int = 64, max_tokens: int = 64):
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from transformers import FlaxBertForSequenceClassification  # pylint: disable=import-outside-toplevel
    from data_pipelines.tokenize import WordPiece, clean_text  # pylint: disable=import-outside-toplevel
    from mced_jax.train import text_common as tc  # pylint: disable=import-outside-toplevel
    if not os.path.exists(os.path.join(teacher_dir, "config.json")):
      raise FileNotFoundError(f"{teacher_dir}: not a teacher directory (no config.json)")
    self.model = FlaxBertForSequenceClassification.from_pretrained(teacher_dir,
                                                                   local_files_only=True)
    cfg = self.model.config
    self.labels = [cfg.id2label[i] for i in range(cfg.num_labels)]
    self.tok = WordPiece(os.path.join(teacher_dir, "vocab.txt"), max_tokens=max_tokens)
    self.batch_size, self.max_tokens, self._clean, self._tc = batch_size, max_tokens, clean_text, tc
    module = self.model.module

    def fwd(params, ids, mask):
      pos = jnp.broadcast_to(jnp.arange(ids.shape[1])[None], ids.shape)
      out = module.apply({"params": params}, ids, mask, jnp.zeros_like(ids), pos, None,
                         deterministic=True, output_hidden_states=True)
      return out.logits.astype(jnp.float32), out.hidden_states

    self._fwd = jax.jit(fwd)

  def logits_and_hidden(self, texts, layers=()):
    """(logits [N, C], {layer: list of [len_i, H] arrays}) for cleaned texts."""
    ids = self._tc.encode(self.tok, [self._clean(t) for t in texts], self.max_tokens)
    logits = np.zeros((len(ids), len(self.labels)), np.float32)
    hidden = {m: [None] * len(ids) for m in layers}
    for idx, length in self._tc.bucket_batches(ids, self.batch_size, (16, 32, self.max_tokens),
                                               None):
      b = self._tc.pad_batch(ids, idx, length, self.batch_size)
      lg, hs = self._fwd(self.model.params, b["input_ids"], b["attention_mask"])
      logits[idx] = np.asarray(lg)[: len(idx)]
      for m in layers:
        h = np.asarray(hs[m])
        for r, i in enumerate(idx):
          hidden[m][i] = h[r, : len(ids[i])]
    return logits, hidden

  def predict(self, texts) -> np.ndarray:
    logits, _ = self.logits_and_hidden(texts)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _read_input(path: str):
  if path.endswith(".jsonl"):
    with open(path, encoding="utf-8") as f:
      rows = [json.loads(l) for l in f if l.strip()]
  elif path.endswith(".csv"):
    with open(path, encoding="utf-8", newline="") as f:
      rows = list(csv.DictReader(f))
  else:
    with open(path, encoding="utf-8", errors="replace") as f:
      rows = [{"text": l.rstrip("\n")} for l in f if l.strip()]
  if not rows:
    raise ValueError(f"{path}: no rows")
  if "text" not in rows[0]:
    raise ValueError(f"{path}: needs a 'text' column; it has {sorted(rows[0])}")
  return rows


def main(argv=None):
  import argparse  # pylint: disable=import-outside-toplevel
  p = argparse.ArgumentParser(description="Label texts or a pair manifest with the teacher")
  p.add_argument("--teacher", required=True, help="fine-tuned teacher directory")
  p.add_argument("--input", required=True, help=".txt (one per line), .csv or .jsonl")
  p.add_argument("--out", required=True, help="output CSV")
  p.add_argument("--threshold", type=float, default=0.0,
                 help="keep rows whose max probability is at least this")
  p.add_argument("--batch_size", type=int, default=64)
  a = p.parse_args(argv)
  rows = _read_input(a.input)
  teacher = TeacherInference(a.teacher, a.batch_size)
  probs = teacher.predict([r["text"] for r in rows])
  for r, pr in zip(rows, probs):
    r["teacher_label"] = teacher.labels[int(pr.argmax())]
    r["teacher_confidence"] = f"{pr.max():.4f}"
    for name, v in zip(teacher.labels, pr):
      r[f"p_{name}"] = f"{v:.4f}"
  keep = [r for r, pr in zip(rows, probs) if pr.max() >= a.threshold]
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  fields = list(rows[0])

  def write(path, rs):
    with open(path, "w", newline="", encoding="utf-8") as f:
      w = csv.DictWriter(f, fieldnames=fields)
      w.writeheader()
      w.writerows(rs)

  write(a.out, keep)
  if a.threshold > 0:
    write(os.path.splitext(a.out)[0] + ".all.csv", rows)
  counts = {n: sum(r["teacher_label"] == n for r in keep) for n in teacher.labels}
  print(f"labelled {len(rows)} rows; kept {len(keep)} with confidence >= {a.threshold}: {counts}")
  return keep


if __name__ == "__main__":
  sys.exit(0 if main() is not None else 1)
