"""MCED distillation: the frozen text teacher teaches the speech student.

The objective (paper eq. 1-4), per step:

  teacher forward (no gradient) -> student forward -> soft-align per layer pair
  -> L = L_RL + sum_j lambda_j L_FL,j -> AdamW update of student + soft-align.

`build()` makes models, optimizer and state; `batches()` (train/pairs.py) feeds the
global batch plan (or SYNTHETIC pairs); loop, step and checkpoints are mced_jax/train/kit.py's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from absl import logging

from mced_jax.kernels import precision
from mced_jax.models import export as export_lib
from mced_jax.models import soft_align as soft_align_lib
from mced_jax.models import student as student_lib
from mced_jax.models import teacher as teacher_lib
from mced_jax.runtime import fs
from mced_jax.runtime import sharding as shd
from mced_jax.train import kit
from mced_jax.train import losses
from mced_jax.train import pairs
from mced_jax.train.pairs import batches  # the input; tests patch distill.batches


def validate(config, teacher) -> None:
  d, s = config.distill, config.student
  if not len(d.teacher_layers) == len(d.student_layers) == len(d.lambdas):
    raise ValueError("distill.teacher_layers, student_layers and lambdas must have the same "
                     f"length, got {len(d.teacher_layers)}, {len(d.student_layers)}, "
                     f"{len(d.lambdas)}")
  bad = [f"teacher layer {m} (the teacher has {teacher.num_layers}; 0 = embeddings)"
         for m in d.teacher_layers if not 0 <= m <= teacher.num_layers]
  bad += [f"student layer {n} (the student has {s.num_layers}; 0 = conv output)"
          for n in d.student_layers if not 0 <= n <= s.num_layers]
  if bad:
    raise ValueError("out of range: " + ", ".join(bad))
  if d.temperature <= 0:
    raise ValueError(f"distill.temperature must be > 0, got {d.temperature}")
  if d.fl_tokens not in ("all", "words"):
    raise ValueError(f"distill.fl_tokens must be 'all' or 'words', got {d.fl_tokens!r}")
  if s.num_classes != teacher.config.num_labels:
    raise ValueError(f"student.num_classes={s.num_classes} but the teacher has "
                     f"{teacher.config.num_labels} labels: RL needs the same classes")


@dataclasses.dataclass
class Distillation:
  config: Any
  mesh: Any
  policy: precision.Policy
  student: student_lib.Student
  align: soft_align_lib.SoftAlignSet
  teacher: teacher_lib.Teacher
  teacher_params: Any  # replicated on the mesh, in the compute dtype
  tx: Any
  schedule: Any
  spec: kit.StateSpec

  def loss_fn(self, params, batch, rng, teacher_params, train: bool = True):
    d = self.config.distill
    if d.targets == "labels":
      return self.label_loss(params, batch, rng, train)
    t_logits, t_hidden = self.teacher.apply(teacher_params, batch["input_ids"],
                                            batch["attention_mask"])
    t_logits = jax.lax.stop_gradient(t_logits)
    t_states = [jax.lax.stop_gradient(t_hidden[m]) for m in d.teacher_layers]
    s_logits, s_hidden, s_mask = self.student.apply(
        {"params": params["student"]}, batch["features"], batch["frame_mask"],
        train=train, rngs={"dropout": rng} if train else None)
    # Real examples have >=1 token and >=1 frame; all-padding rows contribute nothing.
    example_mask = (batch["attention_mask"].sum(-1) > 0) & batch["frame_mask"].any(-1)
    rl = losses.response_kl(t_logits, s_logits, d.temperature, example_mask, d.scale_by_t2)
    aligned = self.align.apply({"params": params["align"]}, t_states,
                               [s_hidden[n] for n in d.student_layers], s_mask)
    token_mask = batch["attention_mask"].astype(bool) & example_mask[:, None]
    if d.fl_tokens == "words":  # the paper's queries: word states, not [CLS]/[SEP]
      pos, n = jnp.arange(token_mask.shape[1]), batch["attention_mask"].sum(-1, keepdims=True)
      token_mask &= (pos > 0) & (pos < n - 1)
    fls = [losses.feature_mse(h_t, h_a, token_mask) for h_t, h_a in zip(t_states, aligned)]
    total = losses.mced_loss(rl, fls, d.lambdas, d.rl_weight)
    aux = {"loss": total, "rl": rl}
    for j, fl in enumerate(fls):
      aux[f"fl_t{d.teacher_layers[j]}_s{d.student_layers[j]}"] = fl
    aux["fl_total"] = sum(lam * fl for lam, fl in zip(d.lambdas, fls))
    return total, aux

  def label_loss(self, params, batch, rng, train: bool = True):
    """The supervised control: cross-entropy on the pairs' own labels, no teacher."""
    s_logits, _, _ = self.student.apply(
        {"params": params["student"]}, batch["features"], batch["frame_mask"],
        train=train, rngs={"dropout": rng} if train else None)
    labels = batch["label"]
    valid = ((labels >= 0) & batch["frame_mask"].any(-1)).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(s_logits.astype(jnp.float32),
                                                         jnp.maximum(labels, 0))
    loss = jnp.sum(ce * valid) / jnp.maximum(jnp.sum(valid), 1.0)
    return loss, {"loss": loss, "ce": loss, "labelled": jnp.sum(valid)}

  def init_params(self, rng):
    c = self.config
    feats = jnp.zeros((1, 16, c.student.feature_dim), jnp.float32)
    fmask = jnp.ones((1, 16), bool)
    r1, r2 = jax.random.split(rng)
    s_params = self.student.init(r1, feats, fmask)["params"]
    _, s_hidden, s_mask = self.student.apply({"params": s_params}, feats, fmask)
    h_t = [jnp.zeros((1, 8, self.teacher.hidden_size), jnp.float32)] * len(c.distill.lambdas)
    a_params = self.align.init(r2, h_t, [s_hidden[i] for i in c.distill.student_layers],
                               s_mask)["params"]
    return {"student": s_params, "align": a_params}

  def make_step(self):
    return kit.make_train_step(
        self.loss_fn, self.tx, self.schedule, mesh=self.mesh, state_shardings=self.spec.shardings,
        policy=self.policy, rng_seed=self.config.seed + 1,
        extra_shardings=(jax.tree.map(lambda _: shd.replicated(self.mesh), self.teacher_params),))


def build(config, mesh=None, teacher=None, teacher_dir=None) -> Distillation:
  """Models, optimizer, state spec; teacher weights replicated on the mesh."""
  policy = precision.from_config(config)
  mesh = mesh if mesh is not None else shd.from_config(config.mesh)
  if teacher is None:
    teacher = teacher_lib.load_teacher(config.teacher, teacher_dir, seed=config.seed)
  teacher = teacher.with_dtype(policy.module_dtype, policy.frozen_dtype)
  validate(config, teacher)
  student = student_lib.student_from_config(config.student, dtype=policy.module_dtype)
  align = soft_align_lib.SoftAlignSet(teacher.hidden_size, len(config.distill.lambdas),
                                      dtype=policy.module_dtype)
  d = config.distill
  tx, schedule = kit.make_optimizer(
      learning_rate=d.learning_rate, total_steps=d.num_steps, warmup_steps=d.warmup_steps,
      end_learning_rate=d.end_learning_rate, b1=d.b1, b2=d.b2, weight_decay=d.weight_decay,
      grad_clip=d.grad_clip)
  dist = Distillation(config, mesh, policy, student, align, teacher,
                      jax.device_put(teacher.params, shd.replicated(mesh)), tx, schedule, None)
  dist.spec = kit.state_spec(dist.init_params, tx, mesh, jax.random.PRNGKey(config.seed))
  return dist


def train(config, layout, out_dir: str | None = None) -> kit.Result:
  """Runs (or resumes) distillation into out_dir (default WORKDIR/distill) and
  exports the student when it reaches num_steps."""
  d = config.distill
  out = out_dir or layout.stage("distill")
  teacher_dir = layout.teacher_dir(config)
  dist = build(config, teacher_dir=teacher_dir)
  def select(ds, rows):  # what the teacher sees in the pairs; paper 3.1.2's selection
    if not (d.teacher_report or d.min_teacher_confidence > 0):
      return rows
    per = pairs.teacher_on_pairs(dist, ds, rows, out)
    return pairs.select(ds, rows, per, d.min_teacher_confidence)

  name, feed, stats = batches(config, layout, dist.mesh, dist.teacher.config.vocab_size, select,
                              classes=pairs.class_names(dist.teacher))
  layout.save_config(out, config, teacher_dir=teacher_dir, data=name,
                     precision=dist.policy.describe(), mesh=dict(dist.mesh.shape))
  logging.info("distill: global batch %d, mesh %s, %s, source %s", d.batch_size,
               dict(dist.mesh.shape), dist.policy.describe(), name)
  loop = kit.LoopConfig.from_section(d, examples_per_step=d.batch_size)
  with jax.set_mesh(dist.mesh):
    res = kit.run("distill", step_fn=dist.make_step(), spec=dist.spec, batches=feed,
                  config=loop, checkpoint_dir=fs.join(out, "checkpoints"), metrics_dir=out,
                  extra=(dist.teacher_params,), meta={"data_source": name})
  if res.meta.get("data_source") != name:
    logging.warning("the checkpoint was written with data source %r, now %r",
                    res.meta.get("data_source"), name)
  student_dir = fs.join(out, "student")
  if res.status == "done" and not export_lib.exists(student_dir):
    export_lib.save_student(student_dir, config, res.state.params["student"],
                            int(jax.device_get(res.state.step)), name, stats,
                            pairs.class_names(dist.teacher))
    logging.info("distill: exported the student to %s", student_dir)
  return res
