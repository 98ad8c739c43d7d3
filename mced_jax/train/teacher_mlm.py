"""Teacher stage 2 ("BERT-base+"): continued masked-LM pretraining on in-domain text.

One sentence per line (subtitles, dialogue). 15 % of the non-special tokens are
selected; of those 80 % become [MASK], 10 % a random token, 10 % stay (BERT's
recipe). A checkpoint without an MLM head (MiniLM ships the encoder only) gets a
new head whose output layer is tied to the word embeddings. Held-out perplexity
(fixed masking) is logged before and after every epoch; the result is saved as an
HF directory (`WORKDIR/teacher_mlm/model`) that stage 3 starts from. Resumable per
epoch; skipped when its output exists.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from mced_jax import checkpoint as ckpt_lib
from mced_jax import metrics
from mced_jax import sharding as shd
from mced_jax.train import text_common as tc

FIRST_NORMAL_ID = 999  # bert-base-uncased vocab: ids below are [PAD]/[unused]/specials


def mask_tokens(ids: np.ndarray, rng: np.random.Generator, vocab_size: int, mask_id: int,
                special_ids, prob: float = 0.15):
  """BERT masking. Returns (inputs, targets, weights): weights mark selected tokens."""
  candidates = (ids > 0) & ~np.isin(ids, list(special_ids))
  selected = (rng.random(ids.shape) < prob) & candidates
  r = rng.random(ids.shape)
  inputs = ids.copy()
  inputs[selected & (r < 0.8)] = mask_id
  rand = selected & (r >= 0.8) & (r < 0.9)
  inputs[rand] = rng.integers(FIRST_NORMAL_ID, vocab_size, size=int(rand.sum()))
  return inputs, ids, selected.astype(np.float32)


def gather_masked(inputs, targets, weights, k: int):
  """Positions of the selected tokens, k per row (the LM head then runs on those
  alone instead of every position: the 30522-way projection is most of an MLM
  step's cost). Rare rows with more than k selections keep only the first k; the
  rest are restored to their original token."""
  b = inputs.shape[0]
  pos = np.zeros((b, k), np.int32)
  tgt = np.zeros((b, k), np.int32)
  w = np.zeros((b, k), np.float32)
  inputs = inputs.copy()
  for r in range(b):
    sel = np.flatnonzero(weights[r] > 0)
    if len(sel) > k:
      inputs[r, sel[k:]] = targets[r, sel[k:]]
      sel = sel[:k]
    pos[r, :len(sel)] = sel
    tgt[r, :len(sel)] = targets[r, sel]
    w[r, :len(sel)] = 1.0
  return inputs, pos, tgt, w


def _masked_lm_logits(mdl, ids, mask, positions, gather, deterministic):
  """Encoder over all tokens, MLM head only at `gather` positions ([B, K])."""
  hidden = mdl.bert(ids, mask, jnp.zeros_like(ids), positions, None,
                    deterministic=deterministic, return_dict=True)[0]
  hidden = jnp.take_along_axis(hidden, gather[..., None], axis=1)
  shared = (mdl.bert.variables["params"]["embeddings"]["word_embeddings"]["embedding"]
            if mdl.config.tie_word_embeddings else None)
  return mdl.cls(hidden, shared_embedding=shared)


def corpus_lines(c) -> list[str]:
  from data_pipelines.adapters import text as text_lib  # pylint: disable=import-outside-toplevel
  files = [p for p in c.text_files.split(",") if p]
  for p in files:
    if not os.path.exists(p):
      raise FileNotFoundError(f"MLM corpus file {p} not found")
  lines = text_lib.read_lines(files, min_words=2)
  if c.include_dialogue:
    # Unlabelled dialogue text of the training splits only (no test text leaks in).
    if os.path.isdir(c.emotionlines_dir):
      rows = text_lib.read_emotionlines(c.emotionlines_dir)["train"]
      lines += [t for t, _ in rows if len(t.split()) >= 2]
    if os.path.exists(c.meld_train_csv):
      import csv  # pylint: disable=import-outside-toplevel
      from data_pipelines.tokenize import clean_text  # pylint: disable=import-outside-toplevel
      with open(c.meld_train_csv, encoding="utf-8", errors="replace", newline="") as f:
        lines += [t for t in (clean_text(r["Utterance"]) for r in csv.DictReader(f))
                  if len(t.split()) >= 2]
  lines = list(dict.fromkeys(lines))
  if c.max_lines > 0:
    lines = lines[: c.max_lines]
  if len(lines) < 20:
    raise ValueError(f"MLM corpus too small ({len(lines)} lines)")
  return lines


def _pooler_of(init_dir: str):
  from transformers import FlaxBertModel  # pylint: disable=import-outside-toplevel
  try:
    return jax.device_get(FlaxBertModel.from_pretrained(init_dir, local_files_only=True)
                          .params.get("pooler"))
  except Exception:  # noqa: BLE001 - a checkpoint without a pooler is fine
    return None


def train(config, workdir: str) -> dict:
  c = config.teacher_mlm
  done, results_path, model_dir = tc.finished_results(workdir, "teacher_mlm")
  if done is not None:
    return done
  from transformers import FlaxBertForMaskedLM  # pylint: disable=import-outside-toplevel
  from data_pipelines.tokenize import WordPiece  # pylint: disable=import-outside-toplevel
  from mced_jax.train.teacher_cls import resolve_init  # pylint: disable=import-outside-toplevel
  init_dir = resolve_init(c)
  tok = WordPiece(os.path.join(init_dir, "vocab.txt"), max_tokens=c.max_tokens)
  lines = corpus_lines(c)
  order = np.random.default_rng(c.seed).permutation(len(lines))
  n_held = max(8, int(c.heldout_fraction * len(lines)))
  held = [lines[i] for i in order[:n_held]]
  train_lines = [lines[i] for i in order[n_held:]]
  model = FlaxBertForMaskedLM.from_pretrained(init_dir, local_files_only=True, seed=c.seed)
  module, bert_cfg = model.module, model.config
  vocab, mask_id = bert_cfg.vocab_size, tok.tok.mask_token_id
  special = {tok.tok.cls_token_id, tok.tok.sep_token_id, tok.tok.pad_token_id, mask_id}
  mesh = shd.make_mesh(config.mesh.data, config.mesh.model)
  shd.check_batch_divisible(c.batch_size, mesh)
  buckets = tuple(b for b in c.buckets if b < c.max_tokens) + (c.max_tokens,)
  train_ids = tc.encode(tok, train_lines, c.max_tokens)
  held_ids = tc.encode(tok, held, c.max_tokens)
  steps_per_epoch = len(tc.bucket_batches(train_ids, c.batch_size, buckets, 0))
  total = steps_per_epoch * c.epochs
  tx, _ = tc.adamw(c.learning_rate, total, int(c.warmup_ratio * total), c.weight_decay)
  state, state_sh = tc.init_state(model.params, tx, mesh)
  del model

  def mlm_loss(params, batch, rng, train):
    ids = batch["input_ids"]
    pos = jnp.broadcast_to(jnp.arange(ids.shape[1])[None], ids.shape)
    logits = module.apply({"params": params}, ids, batch["attention_mask"], pos,
                          batch["gather"], not train, method=_masked_lm_logits,
                          rngs={"dropout": rng} if train else None)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                         batch["target"])
    w = batch["mask_weight"] * batch["weight"][:, None]
    return (ce * w).sum() / jnp.maximum(w.sum(), 1.0), w.sum()

  def loss_fn(params, batch, rng):
    loss, _ = mlm_loss(params, batch, rng, True)
    return loss, {"loss": loss}

  step = tc.make_step(loss_fn, tx, mesh, state_sh, c.seed)
  eval_fn = jax.jit(lambda p, b: mlm_loss(p, b, None, False))

  def masked_batch(ids, idx, length, rng):
    b = tc.pad_batch(ids, idx, length, c.batch_size)
    inp, tgt, w = mask_tokens(b["input_ids"], rng, vocab, mask_id, special)
    inp, gather, tgt, w = gather_masked(inp, tgt, w, k=int(0.25 * length) + 2)
    b.update(input_ids=inp, gather=gather, target=tgt, mask_weight=w)
    return b

  def perplexity(params) -> float:
    rng = np.random.default_rng(12345)  # the same masks every time
    tot, n = 0.0, 0.0
    with jax.set_mesh(mesh):
      for idx, length in tc.bucket_batches(held_ids, c.batch_size, buckets, None):
        b = shd.global_batch(masked_batch(held_ids, idx, length, rng), mesh)
        loss, cnt = jax.device_get(eval_fn(params, b))
        tot, n = tot + float(loss) * float(cnt), n + float(cnt)
    return math.exp(tot / max(n, 1.0))

  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=1)
  meta = {"epoch": 0, "history": []}
  if ckpt.latest_step() is not None:
    state, meta = ckpt.restore(tc.restore_target(state, state_sh))
  else:
    meta["ppl_before"] = perplexity(state.params)
    logging.info("teacher_mlm: held-out perplexity before: %.1f (%d train / %d held-out "
                 "lines)", meta["ppl_before"], len(train_lines), len(held))
  writer = metrics.MetricWriter(workdir)
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  for epoch in range(meta["epoch"] + 1, c.epochs + 1):
    rng = np.random.default_rng(c.seed + 1000 * epoch)
    t0, losses = time.perf_counter(), []
    with jax.set_mesh(mesh):
      for idx, length in tqdm(tc.bucket_batches(train_ids, c.batch_size, buckets, c.seed + epoch),
                              desc=f"teacher_mlm epoch {epoch}/{c.epochs}",
                              disable=jax.process_index() != 0, dynamic_ncols=True):
        b = shd.global_batch(masked_batch(train_ids, idx, length, rng), mesh)
        state, aux = step(state, b)
        losses.append(aux["loss"])
    rec = {"epoch": epoch, "train_loss": float(np.mean(jax.device_get(losses))),
           "heldout_ppl": perplexity(state.params), "epoch_s": time.perf_counter() - t0}
    logging.info("teacher_mlm: %s", rec)
    writer.write(int(jax.device_get(state.step)), rec)
    meta["history"].append(rec)
    meta["epoch"] = epoch
    ckpt.save(epoch, state, meta, force=True)
    ckpt.wait()
  ckpt.close()
  if jax.process_index() == 0:
    params = jax.device_get(state.params)
    pooler = _pooler_of(init_dir)
    if pooler is not None:
      # MLM never uses BERT's pooler; carry the original one over so that stage 3
      # starts from the same pooler with or without stage 2.
      params = {**params, "bert": {**params["bert"], "pooler": pooler}}
    tc.save_hf(FlaxBertForMaskedLM, bert_cfg, params, model_dir, tok.vocab_path)
  results = {"init": init_dir, "lines_train": len(train_lines), "lines_heldout": len(held),
             "ppl_before": meta.get("ppl_before"), "history": meta["history"],
             "model_dir": model_dir}
  if jax.process_index() == 0:
    with open(results_path, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)
  return results
