"""Teacher stages on a tiny random BERT: MLM masking statistics, padding invariance
of the classifier, the stage-2 -> stage-3 -> distillation hand-off through saved
directories, and resume of stage 3."""

import json
import os

import jax
import numpy as np
import pytest

from data_pipelines.adapters import text as text_lib
from mced_jax.layout import Layout
from mced_jax.train import teacher_cls, teacher_mlm


def test_mlm_masking_statistics():
  rng = np.random.default_rng(0)
  ids = rng.integers(1000, 30000, size=(400, 64)).astype(np.int32)
  ids[:, 0], ids[:, -1] = 101, 102
  ids[:50, 40:] = 0  # padding
  inp, tgt, w = teacher_mlm.mask_tokens(ids, rng, 30522, 103, {0, 101, 102, 103})
  sel = w > 0
  cand = (ids > 0) & ~np.isin(ids, [101, 102])
  assert not sel[~cand].any()  # never specials or padding
  assert abs(sel.sum() / cand.sum() - 0.15) < 0.01
  masked = (inp == 103) & sel
  kept = (inp == ids) & sel
  assert abs(masked.sum() / sel.sum() - 0.8) < 0.02
  assert abs(kept.sum() / sel.sum() - 0.1) < 0.02  # (random may rarely hit itself)
  np.testing.assert_array_equal(tgt, ids)
  assert (inp[~sel] == ids[~sel]).all()


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
  from transformers import BertConfig, FlaxBertForMaskedLM
  from data_pipelines.tokenize import default_vocab
  import shutil
  d = tmp_path_factory.mktemp("tinybert")
  cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, max_position_embeddings=64)
  FlaxBertForMaskedLM(cfg, seed=0).save_pretrained(str(d))
  shutil.copy(default_vocab(), os.path.join(d, "vocab.txt"))
  return str(d)


def write_text_data(d):
  rows = {"train": ["i am so happy today", "this is awful and i hate it", "what a surprise",
                    "i feel so sad and alone", "the meeting is at noon"] * 4,
          "validation": ["so happy", "i hate this", "wow really", "so sad", "at noon"],
          "test": ["very happy", "hate it", "no way", "crying", "the bus"]}
  labels = ["happiness", "anger", "surprise", "sadness", "neutral"]
  os.makedirs(d, exist_ok=True)
  for split, texts in rows.items():
    with open(os.path.join(d, f"{split}.jsonl"), "w", encoding="utf-8") as f:
      for i, t in enumerate(texts):
        f.write(json.dumps({"text": t, "label": labels[i % 5]}) + "\n")


def test_stage2_stage3_distill_handoff_and_resume(tiny_bert_dir, tmp_path):
  import mced
  cfg = mced.get_config("tiny")
  lines = tmp_path / "lines.txt"
  lines.write_text("\n".join(f"line number {i} of the subtitle corpus" for i in range(80)),
                   encoding="utf-8")
  write_text_data(str(tmp_path / "text"))
  with cfg.unlocked():
    cfg.teacher_mlm.init = tiny_bert_dir
    cfg.teacher_mlm.text_files = str(lines)
    cfg.teacher_mlm.include_dialogue = False
    cfg.teacher_mlm.batch_size = 8
    cfg.teacher_cls.init = "mlm"  # this work dir's stage-2 output
    cfg.teacher_cls.data_dir = str(tmp_path / "text")
    cfg.teacher_cls.meld_test_csv = ""
    cfg.teacher_cls.batch_size = 8
    cfg.teacher_cls.eval_batch_size = 8
    cfg.teacher_cls.epochs = 2
    cfg.teacher_cls.stop_after_epoch = 1
  layout = Layout(str(tmp_path / "run"))
  mlm = teacher_mlm.train(cfg, layout)
  assert mlm["history"][0]["heldout_ppl"] < mlm["ppl_before"]  # it learned something
  # Stage 3 from the stage-2 directory; stop after epoch 1, then resume.
  out = teacher_cls.train(cfg, layout)
  assert out == {"stopped_after_epoch": 1}
  with cfg.unlocked():
    cfg.teacher_cls.stop_after_epoch = -1
  res = teacher_cls.train(cfg, layout)
  assert [h["epoch"] for h in res["history"]] == [1, 2]  # epoch 1 was not redone
  assert 0.0 <= res["test"]["WA"] <= 1.0 and os.path.exists(
      tmp_path / "run" / "teacher_cls" / "confusion.png")
  model_dir = str(tmp_path / "run" / "teacher_cls" / "model")
  cfg_json = json.load(open(os.path.join(model_dir, "config.json"), encoding="utf-8"))
  assert cfg_json["id2label"]["1"] == "happiness"
  # A third run finds the results and skips.
  assert teacher_cls.train(cfg, layout)["history"] == res["history"]
  # Distillation loads the fine-tuned teacher from its directory.
  from mced_jax.models import teacher as teacher_lib
  with cfg.unlocked():
    cfg.teacher.source = "stage3"
  assert layout.teacher_dir(cfg) == model_dir
  t = teacher_lib.load_teacher(cfg.teacher, layout.teacher_dir(cfg))
  assert (t.num_layers, t.hidden_size, t.config.num_labels) == (2, 32, 5)
  # Padding does not change the classifier's outputs.
  ids = np.array([[101, 2023, 2003, 2307, 102]], np.int32)
  a = t.apply(t.params, ids, np.ones_like(ids))[0]
  ids_p = np.concatenate([ids, np.zeros((1, 7), np.int32)], 1)
  b = t.apply(t.params, ids_p, (ids_p > 0).astype(np.int32))[0]
  np.testing.assert_allclose(a, b, atol=1e-5)
  # The stage-3 classifier reproduces its own saved weights' logits.
  from transformers import FlaxBertForSequenceClassification
  hf = FlaxBertForSequenceClassification.from_pretrained(model_dir)
  jax.tree.map(np.testing.assert_array_equal, hf.params, t.params)


def test_gather_masked_positions():
  ids = np.array([[101, 5, 6, 7, 8, 102], [101, 9, 10, 102, 0, 0]], np.int32)
  inp = ids.copy()
  inp[0, [1, 2, 4]] = 103
  inp[1, 2] = 103
  w = (inp == 103).astype(np.float32)
  out, pos, tgt, ww = teacher_mlm.gather_masked(inp, ids, w, k=2)
  np.testing.assert_array_equal(pos, [[1, 2], [2, 0]])
  np.testing.assert_array_equal(tgt, [[5, 6], [10, 0]])  # unused slots: weight 0
  np.testing.assert_array_equal(ww, [[1, 1], [1, 0]])
  assert out[0, 4] == 8  # the third selection of row 0 (over k) is restored


def test_teacher_inference_cli_labels_and_filters(tiny_bert_dir, tmp_path):
  from transformers import FlaxBertForSequenceClassification
  import shutil
  from mced_jax.tools import teacher_infer
  d = tmp_path / "cls"
  m = FlaxBertForSequenceClassification.from_pretrained(
      tiny_bert_dir, num_labels=5, id2label=dict(enumerate(teacher_cls.CLASSES)),
      label2id={n: i for i, n in enumerate(teacher_cls.CLASSES)})
  m.save_pretrained(str(d))
  shutil.copy(os.path.join(tiny_bert_dir, "vocab.txt"), d / "vocab.txt")
  manifest = tmp_path / "pairs.csv"
  manifest.write_text("audio,text\na.wav,I am so happy\nb.wav,that is terrible news\n"
                      "c.wav,I don\x92t care\n", encoding="utf-8")
  from mced_jax.models.teacher import TeacherClassifier
  clf = TeacherClassifier.from_dir(str(d))
  probs = clf.predict(["I am so happy", "x"])
  assert probs.shape == (2, 5) and np.allclose(probs.sum(1), 1, atol=1e-5)
  thr = float(np.sort(clf.predict(
      ["I am so happy", "that is terrible news", "I don't care"]).max(1))[1])
  kept = teacher_infer.main(["teacher_infer", f"--teacher={d}", f"--input={manifest}",
                             f"--out={tmp_path / 'out.csv'}", f"--threshold={thr}"])
  assert len(kept) == 2 and all(float(r["teacher_confidence"]) >= thr - 1e-4 for r in kept)
  import csv
  all_rows = list(csv.DictReader(open(tmp_path / "out.all.csv", encoding="utf-8")))
  assert len(all_rows) == 3 and all_rows[0]["teacher_label"] in teacher_cls.CLASSES


def test_teacher_text_falls_back_to_demo_transcripts(tmp_path, tiny_config):
  """Without XED/EmotionLines (no ../shared), stage 3 learns from the demo corpus's
  labelled transcripts, split by voice like the corpus itself."""
  work = tmp_path / "work"
  (work / "data" / "demo_corpus").mkdir(parents=True)
  rows = ["id,audio,text,label,speaker,split"]
  for split, n in (("train", 4), ("validation", 2), ("test", 2)):
    for i in range(n):
      label = teacher_cls.CLASSES[i % 5]
      rows.append(f"{split}{i},wavs/{split}{i}.wav,I feel {label} today {i}.,{label},v,{split}")
  (work / "data" / "demo_corpus" / "manifest.csv").write_text("\n".join(rows) + "\n")
  layout = Layout(str(work))
  c = tiny_config.teacher_cls
  d = text_lib.ensure_teacher_text(layout.teacher_text, str(tmp_path / "no_xed"),
                                   c.emotionlines_dir, c.seed,
                                   str(work / "data" / "demo_corpus" / "manifest.csv"))
  splits = text_lib.read_splits(d)
  assert {k: len(v[0]) for k, v in splits.items()} == {"train": 4, "validation": 2, "test": 2}
  assert splits["train"][0][1] == "I feel happiness today 1."
  assert list(splits["train"][1]) == [0, 1, 2, 3]
  with pytest.raises(FileNotFoundError, match="no_xed"):
    text_lib.ensure_teacher_text(str(tmp_path / "elsewhere"), str(tmp_path / "no_xed"),
                                 c.emotionlines_dir, c.seed, None)
