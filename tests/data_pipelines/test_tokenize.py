"""Transcript cleaning and WordPiece ids."""

import pytest

from data_pipelines.tokenize import WordPiece, clean_text, word_count


@pytest.mark.parametrize("raw,want", [
    ("I don\x92t know", "I don't know"),  # EmotionLines cp1252 byte
    ("\x93Hi\x94 there\x85", '"Hi" there...'),
    ("it\u00e2\u20ac\u2122s fine", "it's fine"),  # UTF-8 read as cp1252
    ("  lots \n of\tspace ", "lots of space"),
    (b"bytes \x92 cp1252", "bytes ' cp1252"),
    (None, ""),
])
def test_clean_text(raw, want):
  assert clean_text(raw) == want


def test_word_count():
  assert word_count("Hello!") == 1
  assert word_count("I don't know.") == 3


def test_wordpiece_truncation_keeps_sep():
  wp = WordPiece(max_tokens=6)
  ids, cut = wp.encode("this sentence is certainly longer than six word pieces")
  assert cut and len(ids) == 6
  assert ids[0] == wp.tok.cls_token_id and ids[-1] == wp.tok.sep_token_id
  ids, cut = wp.encode("hi")
  assert not cut and list(ids) == [wp.tok.cls_token_id, wp.tok.convert_tokens_to_ids("hi"),
                                   wp.tok.sep_token_id]
