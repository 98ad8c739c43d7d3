"""Teacher stage 2 ("BERT-base+"): continued masked-LM pretraining on in-domain text.

One sentence per line (subtitles, dialogue). 15 % of the non-special tokens are
selected; of those 80 % become [MASK], 10 % a random token, 10 % stay (BERT's
recipe). A checkpoint without an MLM head (MiniLM ships the encoder only) gets a
new head whose output layer is tied to the word embeddings; the head runs only at
the masked positions. Held-out perplexity (fixed masking) is logged before
training and after every epoch; the result is an HF directory
(`WORKDIR/teacher_mlm/model`) that stage 3 starts from. The loop, checkpoints and
NaN guard are the training kit's; the stage is skipped when its output exists.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from data_pipelines import buckets as buckets_lib
from data_pipelines.adapters import text as text_lib
from mced_jax.models import export as export_lib
from mced_jax.models import teacher as teacher_lib
from mced_jax.runtime import fs
from mced_jax.runtime import sharding as shd
from mced_jax.train import kit
from mced_jax.train import text_setup

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
  """Positions of the selected tokens, k per row. Rare rows with more than k
  selections keep only the first k; the rest are restored to their original token."""
  b = inputs.shape[0]
  pos, tgt, w = np.zeros((b, k), np.int32), np.zeros((b, k), np.int32), np.zeros((b, k),
                                                                                 np.float32)
  inputs = inputs.copy()
  for r in range(b):
    sel = np.flatnonzero(weights[r] > 0)
    if len(sel) > k:
      inputs[r, sel[k:]] = targets[r, sel[k:]]
      sel = sel[:k]
    pos[r, :len(sel)], tgt[r, :len(sel)], w[r, :len(sel)] = sel, targets[r, sel], 1.0
  return inputs, pos, tgt, w


def train(config, layout) -> dict:
  c, out, model_dir = config.teacher_mlm, layout.stage("teacher_mlm"), layout.teacher_mlm_model
  done, init_dir, tok = text_setup.start("teacher_mlm", c, layout, model_dir)
  if done is not None:
    return done
  from transformers import FlaxBertForMaskedLM, FlaxBertModel  # pylint: disable=import-outside-toplevel
  lines = text_lib.mlm_lines(c.text_files, c.emotionlines_dir, c.meld_train_csv,
                             c.include_dialogue, c.max_lines)
  order = np.random.default_rng(c.seed).permutation(len(lines))
  n_held = max(8, int(c.heldout_fraction * len(lines)))
  held_ids = tok.encode_many([lines[i] for i in order[:n_held]])
  train_ids = tok.encode_many([lines[i] for i in order[n_held:]])
  model = teacher_lib.load_hf(FlaxBertForMaskedLM, init_dir, seed=c.seed)
  module, bert_cfg = model.module, model.config
  vocab, mask_id = bert_cfg.vocab_size, tok.tok.mask_token_id
  special = {tok.tok.cls_token_id, tok.tok.sep_token_id, tok.tok.pad_token_id, mask_id}
  job = text_setup.text_job(config, c, model.params, train_ids)
  mesh, policy, rows, spe, spec = job.mesh, job.policy, job.rows, job.steps_per_epoch, job.spec
  held_lengths = np.array([len(x) for x in held_ids])
  del model
  layout.save_config(out, config, init=init_dir, lines=len(lines), precision=policy.describe())

  def mlm_loss(params, batch, rng, train):
    logits = teacher_lib.bert_apply(module, params, batch["input_ids"], batch["attention_mask"],
                                    train=train, rng=rng, gather=batch["gather"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                         batch["target"])
    w = batch["mask_weight"] * batch["weight"][:, None]
    return (ce * w).sum() / jnp.maximum(w.sum(), 1.0), w.sum()

  def loss_fn(params, batch, rng):
    loss, _ = mlm_loss(params, batch, rng, True)
    return loss, {"loss": loss}

  def masked_batch(ids, idx, length, rng):
    b = buckets_lib.pad_token_rows(ids, idx, length, c.batch_size)
    inp, tgt, w = mask_tokens(b["input_ids"], rng, vocab, mask_id, special)
    inp, gather, tgt, w = gather_masked(inp, tgt, w, k=int(0.25 * length) + 2)
    b.update(input_ids=inp, gather=gather, target=tgt, mask_weight=w)
    return shd.global_batch({k: v[rows] for k, v in b.items()}, rows, mesh)

  def batches(start):
    for epoch in range(start // spe + 1, c.epochs + 1):
      # The masks of an epoch are one seeded stream: a resumed epoch replays the
      # draws of the batches it already did.
      rng = np.random.default_rng(c.seed + 1000 * epoch)
      for i, (idx, length) in enumerate(job.epoch_batches(epoch, c.seed, c.batch_size)):
        if (epoch - 1) * spe + i < start:
          b = buckets_lib.pad_token_rows(train_ids, idx, length, c.batch_size)
          mask_tokens(b["input_ids"], rng, vocab, mask_id, special)
          continue
        yield masked_batch(train_ids, idx, length, rng)

  eval_loss = kit.eval_fn(lambda p, b: mlm_loss(p, b, None, False), mesh, policy)

  def perplexity(params) -> float:
    rng = np.random.default_rng(12345)  # the same masks every time
    tot, n = 0.0, 0.0
    for idx, length in buckets_lib.bucketed_batches(held_lengths, c.batch_size, job.buckets):
      loss, cnt = jax.device_get(eval_loss(params, masked_batch(held_ids, idx, length, rng)))
      tot, n = tot + float(loss) * float(cnt), n + float(cnt)
    return math.exp(tot / max(n, 1.0))

  def evaluate(state, step, meta, means):
    rec = {"epoch": step // spe, "train_loss": means.get("loss"),
           "heldout_ppl": perplexity(state.params)}
    logging.info("teacher_mlm: %s", rec)
    meta["history"].append(rec)
    return rec

  loop = kit.LoopConfig.from_section(c, num_steps=job.total, checkpoint_every=spe,
                                     keep_checkpoints=1, eval_every=spe,
                                     examples_per_step=c.batch_size)
  with jax.set_mesh(mesh):
    meta = {"history": []}
    if not fs.exists(fs.join(out, "checkpoints")) or not fs.listdir(fs.join(out, "checkpoints")):
      meta["ppl_before"] = perplexity(spec.create().params)
      logging.info("teacher_mlm: held-out perplexity before: %.1f (%d train / %d held-out "
                   "lines)", meta["ppl_before"], len(train_ids), len(held_ids))
    res = kit.run("teacher_mlm", step_fn=kit.make_train_step(
        loss_fn, job.tx, job.schedule, mesh=mesh, state_shardings=spec.shardings,
        policy=policy, rng_seed=c.seed), spec=spec, batches=batches, config=loop,
        checkpoint_dir=fs.join(out, "checkpoints"), metrics_dir=out, evaluate=evaluate,
        meta=meta)
  if res.status != "done":
    return {"stopped_at_step": int(jax.device_get(res.state.step))}
  params = export_lib.to_host(res.state.params)
  if jax.process_index() == 0:
    try:  # MLM never trains BERT's pooler: carry the original one over for stage 3
      pooler = jax.device_get(teacher_lib.load_hf(FlaxBertModel, init_dir).params.get("pooler"))
    except Exception:  # noqa: BLE001 - a checkpoint without a pooler is fine
      pooler = None
    if pooler is not None:
      params = {**params, "bert": {**params["bert"], "pooler": pooler}}
    teacher_lib.save_hf(FlaxBertForMaskedLM, bert_cfg, params, model_dir, tok.vocab_path)
  results = {"init": init_dir, "lines_train": len(train_ids), "lines_heldout": len(held_ids),
             "ppl_before": res.meta.get("ppl_before"), "history": res.meta["history"],
             "model_dir": model_dir}
  if jax.process_index() == 0:
    fs.write_json(fs.join(out, "results.json"), results)
  return results
