"""MCED distillation: the frozen text teacher teaches the speech student.

`build()` assembles models, optimizer and the sharded, jitted `train_step`;
`train()` is the loop (resume, logging, checkpoints). The step:

  teacher forward (no gradient) -> student forward -> soft-align per layer pair
  -> L = L_RL + sum_j lambda_j L_FL,j -> AdamW update of student + soft-align.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from absl import logging

from mced_jax import checkpoint as ckpt_lib
from mced_jax import export as export_lib
from mced_jax import losses
from mced_jax import metrics as metrics_lib
from mced_jax import preemption
from mced_jax import sharding as shd
from mced_jax.models import matmul as matmul_lib
from mced_jax.models import soft_align as soft_align_lib
from mced_jax.models import student as student_lib
from mced_jax.models import teacher as teacher_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any  # {"student": ..., "align": ...}; fp32 master weights
  opt_state: Any
  # Steps whose loss or gradient was NaN/Inf: their update was not applied.
  nonfinite_steps: jax.Array


def compute_dtype(name: str):
  if name not in DTYPES:
    raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
  return DTYPES[name]


def lr_schedule(cfg) -> optax.Schedule:
  """Linear decay from learning_rate to end_learning_rate over num_steps (paper),
  after an optional linear warmup."""
  decay = optax.linear_schedule(cfg.learning_rate, cfg.end_learning_rate,
                                max(cfg.num_steps - cfg.warmup_steps, 1))
  if cfg.warmup_steps <= 0:
    return decay
  warm = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
  return optax.join_schedules([warm, decay], [cfg.warmup_steps])


def make_optimizer(cfg, schedule):
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  return optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip > 0 else optax.identity(),
      optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                  mask=decay_mask))


def validate_layers(config, teacher_layers: int) -> None:
  d = config.distill
  if not len(d.teacher_layers) == len(d.student_layers) == len(d.lambdas):
    raise ValueError("distill.teacher_layers, student_layers and lambdas must have the "
                     f"same length, got {len(d.teacher_layers)}, {len(d.student_layers)}, "
                     f"{len(d.lambdas)}")
  for m in d.teacher_layers:
    if not 0 <= m <= teacher_layers:
      raise ValueError(f"teacher layer {m} out of range: the teacher has {teacher_layers} "
                       "layers (0 = embeddings)")
  for n in d.student_layers:
    if not 0 <= n <= config.student.num_layers:
      raise ValueError(f"student layer {n} out of range: the student has "
                       f"{config.student.num_layers} layers (0 = conv output)")
  if d.temperature <= 0:
    raise ValueError(f"distill.temperature must be > 0, got {d.temperature}")


@dataclasses.dataclass
class Distiller:
  """Everything the step needs, built once per (config, mesh, batch shape)."""

  config: Any
  mesh: Any
  student: student_lib.Student
  align: soft_align_lib.SoftAlignSet
  teacher: teacher_lib.Teacher
  teacher_params: Any
  tx: optax.GradientTransformation
  schedule: Callable
  state_shardings: Any = None
  train_step: Callable = None

  # ---------------- the objective ----------------
  def loss_fn(self, params, teacher_params, batch, rng, train: bool = True):
    d = self.config.distill
    t_logits, t_hidden = self.teacher.apply(teacher_params, batch["input_ids"],
                                            batch["attention_mask"])
    t_logits = jax.lax.stop_gradient(t_logits)
    t_states = [jax.lax.stop_gradient(t_hidden[m]) for m in d.teacher_layers]
    s_logits, s_hidden, s_mask = self.student.apply(
        {"params": params["student"]}, batch["features"], batch["frame_mask"],
        train=train, rngs={"dropout": rng} if train else None)
    # Real examples have >=1 token and >=1 frame; all-padding rows (partial final
    # batches) contribute nothing.
    example_mask = (batch["attention_mask"].sum(-1) > 0) & batch["frame_mask"].any(-1)
    rl = losses.response_kl(t_logits, s_logits, d.temperature, example_mask,
                            d.scale_by_t2)
    aligned = self.align.apply({"params": params["align"]}, t_states,
                               [s_hidden[n] for n in d.student_layers], s_mask)
    token_mask = batch["attention_mask"].astype(bool) & example_mask[:, None]
    fls = [losses.feature_mse(h_t, h_a, token_mask) for h_t, h_a in zip(t_states, aligned)]
    total = losses.mced_loss(rl, fls, d.lambdas, d.rl_weight)
    aux = {"loss": total, "rl": rl}
    for j, fl in enumerate(fls):
      aux[f"fl_t{d.teacher_layers[j]}_s{d.student_layers[j]}"] = fl
    aux["fl_total"] = sum(lam * fl for lam, fl in zip(d.lambdas, fls))
    return total, aux

  # ---------------- state ----------------
  def _init_params(self, rng, batch_size: int, frames: int, tokens: int):
    cfg = self.config
    feats = jnp.zeros((batch_size, frames, cfg.student.feature_dim), jnp.float32)
    fmask = jnp.ones((batch_size, frames), bool)
    r1, r2 = jax.random.split(rng)
    s_params = self.student.init(r1, feats, fmask)["params"]
    _, s_hidden, s_mask = self.student.apply({"params": s_params}, feats, fmask)
    n = len(cfg.distill.teacher_layers)
    h_t = [jnp.zeros((batch_size, tokens, self.teacher.hidden_size), jnp.float32)] * n
    a_params = self.align.init(r2, h_t, [s_hidden[i] for i in cfg.distill.student_layers],
                               s_mask)["params"]
    return {"student": s_params, "align": a_params}

  def _init_state(self, rng) -> TrainState:
    params = self._init_params(rng, 1, 16, 8)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params),
                      nonfinite_steps=jnp.zeros((), jnp.int32))

  def abstract_state(self):
    """ShapeDtypeStructs (with shardings) of the state: the restore target."""
    abstract = jax.eval_shape(self._init_state, jax.random.PRNGKey(0))
    self.state_shardings = shd.state_shardings(abstract, self.mesh, self.config.mesh.fsdp)
    return ckpt_lib.abstract_with_shardings(abstract, self.state_shardings)

  def init_state(self, rng) -> TrainState:
    """Initialises the state directly in its sharded layout."""
    self.abstract_state()
    return jax.jit(self._init_state, out_shardings=self.state_shardings)(rng)

  # ---------------- the step ----------------
  def make_train_step(self):
    if self.state_shardings is None:
      self.abstract_state()
    base_rng = jax.random.PRNGKey(self.config.seed + 1)
    rep = shd.replicated(self.mesh)
    batch_sh = shd.batch_sharding(self.mesh)
    teacher_sh = jax.tree.map(lambda _: rep, self.teacher_params)

    def step_fn(state: TrainState, teacher_params, batch):
      rng = jax.random.fold_in(base_rng, state.step)
      (_, aux), grads = jax.value_and_grad(self.loss_fn, has_aux=True)(
          state.params, teacher_params, batch, rng)
      grad_norm = optax.tree.norm(grads)
      # A NaN/Inf loss or gradient must never reach the weights: such a step keeps
      # the old parameters and optimizer state and is counted (the host then skips
      # on or stops, per distill.on_nonfinite). A cond, not an elementwise select
      # over every weight and moment: only the taken branch runs.
      finite = jnp.isfinite(aux["loss"]) & jnp.isfinite(grad_norm)

      def apply_update(_):
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        return optax.apply_updates(state.params, updates), opt_state

      params, opt_state = jax.lax.cond(finite, apply_update,
                                       lambda _: (state.params, state.opt_state), None)
      aux["grad_norm"] = grad_norm
      aux["lr"] = self.schedule(state.step)
      aux["nonfinite_steps"] = state.nonfinite_steps + (~finite).astype(jnp.int32)
      return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                           nonfinite_steps=aux["nonfinite_steps"]), aux

    self.train_step = jax.jit(
        step_fn, in_shardings=(self.state_shardings, teacher_sh, batch_sh),
        out_shardings=(self.state_shardings, rep), donate_argnums=(0,))
    return self.train_step


def build(config, mesh=None, teacher=None) -> Distiller:
  """Builds models, optimizer and teacher weights (placed replicated on the mesh)."""
  dtype = compute_dtype(config.dtype)
  # cpu_bf16 (bf16 on CPU): modules compute in fp32, matmul operands are bf16.
  impl = matmul_lib.implementation(config.matmul, dtype)
  mdtype = matmul_lib.module_dtype(impl, dtype)
  mesh = mesh if mesh is not None else shd.make_mesh(config.mesh.data, config.mesh.model)
  if teacher is None:
    teacher = teacher_lib.load_teacher(config.teacher, dtype=mdtype, seed=config.seed)
  module = teacher.module if teacher.module.dtype == mdtype else teacher.module.clone(dtype=mdtype)
  teacher = dataclasses.replace(teacher, module=module, matmul=impl)
  validate_layers(config, teacher.num_layers)
  if config.student.num_classes != teacher.config.num_labels:
    raise ValueError(f"student.num_classes={config.student.num_classes} but the teacher "
                     f"has {teacher.config.num_labels} labels: RL needs the same classes")
  student = student_lib.student_from_config(config.student, dtype=mdtype, matmul=impl)
  align = soft_align_lib.SoftAlignSet(teacher.hidden_size, len(config.distill.lambdas),
                                      dtype=mdtype, matmul=impl)
  schedule = lr_schedule(config.distill)
  tx = make_optimizer(config.distill, schedule)
  t_params = teacher.params
  if dtype != jnp.float32:
    t_params = teacher_lib.cast_params(t_params, dtype)  # frozen: no fp32 copy needed
  t_params = jax.device_put(t_params, shd.replicated(mesh))
  return Distiller(config, mesh, student, align, teacher, t_params, tx, schedule)


def resolve_inputs(config, workdir: str) -> None:
  """Work-dir defaults: `teacher.source=stage3` is this work dir's fine-tuned
  teacher; an empty tfrecord `data.path` is the `data` stage's output."""
  if config.teacher.source == "stage3":
    config.teacher.source = "path"
    config.teacher.path = os.path.join(workdir, "teacher_cls", "model")
  if config.data.source == "tfrecord" and not config.data.path:
    config.data.path = os.path.join(workdir, "data", config.data.corpus)


def make_source(config):
  """The distillation input. Only SYNTHETIC pairs exist until the data pipeline."""
  d = config.data
  if d.source == "synthetic":
    from mced_jax.synthetic import SyntheticPairs  # pylint: disable=import-outside-toplevel
    return SyntheticPairs(
        config.distill.batch_size, d.max_frames, d.max_tokens,
        config.teacher.vocab_size if config.teacher.source == "random" else 30522,
        feature_dim=config.student.feature_dim, min_frames=d.min_frames,
        min_tokens=d.min_tokens, seed=config.seed)
  if d.source == "tfrecord":
    if not d.path:
      raise ValueError("data.source='tfrecord' needs --config.data.path=<prepared dir> "
                       "(the --out of python -m data_pipelines.prepare)")
    # TensorFlow enters only here, through the data pipeline package.
    from data_pipelines import input_pipeline as ip  # pylint: disable=import-outside-toplevel
    cfg = ip.ReaderConfig(batch_size=config.distill.batch_size, max_frames=d.max_frames,
                          max_tokens=d.max_tokens, frame_buckets=tuple(d.frame_buckets),
                          seed=config.seed, cache=d.cache, shuffle_buffer=d.shuffle_buffer)
    return ip.TFRecordPairs(d.path, d.split, config.distill.batch_size, cfg,
                            jax.process_index(), jax.process_count())
  raise ValueError(f"unknown data.source {d.source!r}; known: synthetic, tfrecord")


def _progress(total: int, initial: int):
  if jax.process_index() != 0:
    return None
  try:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return tqdm(total=total, initial=initial, desc="distill", unit="step",
              dynamic_ncols=True, leave=True)


def _check_batch(local: dict, vocab: int, feature_dim: int) -> None:
  """Host-side checks that would otherwise fail silently inside the step."""
  if local["features"].shape[-1] != feature_dim:
    raise ValueError(f"input features have {local['features'].shape[-1]} dims, the student "
                     f"expects {feature_dim} (IS16 ComParE LLD + deltas)")
  if local["input_ids"].max() >= vocab:  # JAX would clamp the lookup silently
    raise ValueError(f"token id {int(local['input_ids'].max())} >= the teacher's vocab "
                     f"size {vocab}: data and teacher use different vocabularies")


def train(config, workdir: str) -> TrainState:
  """Runs (or resumes) distillation in `workdir`; returns the final state.

  Resumes from the newest checkpoint; SIGTERM/SIGINT save and exit cleanly; NaN/Inf
  steps are never applied, and are skipped (counted) or stop the run per
  distill.on_nonfinite, so the last good checkpoint is never overwritten.
  """
  d = config.distill
  if d.on_nonfinite not in ("skip", "stop"):
    raise ValueError(f"distill.on_nonfinite must be 'skip' or 'stop', got {d.on_nonfinite!r}")
  os.makedirs(workdir, exist_ok=True)
  distiller = build(config)
  mesh = distiller.mesh
  shd.check_batch_divisible(d.batch_size, mesh)
  source = make_source(config)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), d.keep_checkpoints)
  abstract = distiller.abstract_state()
  if ckpt.latest_step() is not None:
    state, meta = ckpt.restore(abstract)
    if meta.get("data_source") != source.name:
      logging.warning("checkpoint was written with data source %r, now %r",
                      meta.get("data_source"), source.name)
  else:
    state = distiller.init_state(jax.random.PRNGKey(config.seed))
  train_step = distiller.make_train_step()
  start = int(jax.device_get(state.step))
  end = d.num_steps if d.stop_after < 0 else min(d.num_steps, d.stop_after)
  if start >= end:
    logging.info("distill: already at step %d (target %d), nothing to do", start, end)
    ckpt.close()
    if end == d.num_steps and not export_lib.exists(os.path.join(workdir, "student")):
      export_student(config, state, workdir, source)
    return state
  logging.info("distill: steps %d -> %d, global batch %d, mesh %s, dtype %s, source %s",
               start, end, d.batch_size, dict(mesh.shape), config.dtype, source.name)
  writer = metrics_lib.MetricWriter(workdir)
  bar = _progress(end, start)
  batches = source.iterator(start)
  nonfinite_seen = int(jax.device_get(state.nonfinite_steps))
  last_saved = [start if ckpt.latest_step() == start else None]
  truncated = {"frames": 0, "tokens": 0}

  def save(step, force=False):
    if last_saved[0] != step and ckpt.save(
        step, state, {"step": step, "data_source": source.name, "data_position": step},
        force=force):
      last_saved[0] = step

  def check_nonfinite(step) -> None:
    """Host check (at log points and before saves) of the in-step NaN/Inf counter."""
    nonlocal nonfinite_seen
    n = int(jax.device_get(state.nonfinite_steps))
    if n > nonfinite_seen:
      if d.on_nonfinite == "stop":
        raise FloatingPointError(
            f"non-finite loss or gradient by step {step} ({n} step(s) so far); their "
            f"updates were not applied and the last good checkpoint "
            f"(step {ckpt.latest_step()}) is intact. Use --config.distill.on_nonfinite=skip "
            "to skip such steps instead.")
      logging.warning("distill: %d step(s) with NaN/Inf loss or gradient skipped so far",
                      n)
      nonfinite_seen = n

  # Throughput excludes compilation: the first step of every new input shape (one
  # per length bucket) is timed on its own and logged as compile time.
  seen_shapes, t_last, steps_since = set(), time.perf_counter(), 0
  vocab, feat_dim = distiller.teacher.config.vocab_size, config.student.feature_dim
  preempted = False
  try:
    with jax.set_mesh(mesh), preemption.PreemptionGuard(d.preemption_check_every) as guard:
      for step in range(start, end):
        if guard.should_stop(step):
          preempted = True
          break
        local = next(batches)
        _check_batch(local, vocab, feat_dim)
        for k in ("frames", "tokens"):
          if f"truncated_{k}" in local:
            truncated[k] += int(local.pop(f"truncated_{k}").sum())
        batch = shd.global_batch(local, mesh)
        shape = (batch["features"].shape, batch["input_ids"].shape)
        if shape not in seen_shapes:
          seen_shapes.add(shape)
          jax.block_until_ready(state)
          pause = time.perf_counter()
          state, aux = train_step(state, distiller.teacher_params, batch)
          jax.block_until_ready(aux)
          took = time.perf_counter() - pause
          logging.info("distill: compiled for input shape %s in %.1f s", shape[0], took)
          writer.write(step + 1, {"compile_s": took, "compiled_shapes": len(seen_shapes)})
          if steps_since == 0:  # nothing timed yet in this window: start it now
            t_last = time.perf_counter()
          else:
            t_last += time.perf_counter() - pause  # keep this step out of throughput
        else:
          state, aux = train_step(state, distiller.teacher_params, batch)
          steps_since += 1
        done = step + 1
        if bar is not None:
          bar.update(1)
        if done % d.log_every == 0 or done == end:
          aux = jax.device_get(aux)  # the only host sync: at log points
          now = time.perf_counter()
          scalars = {k: float(v) for k, v in aux.items()}
          if steps_since:
            dt = now - t_last
            scalars["steps_per_s"] = steps_since / dt
            scalars["examples_per_s"] = steps_since * d.batch_size / dt
          scalars["truncated_frames"] = truncated["frames"]
          scalars["truncated_tokens"] = truncated["tokens"]
          t_last, steps_since = now, 0
          writer.write(done, scalars)
          if bar is not None:
            bar.set_postfix(loss=f"{scalars['loss']:.4f}", rl=f"{scalars['rl']:.4f}",
                            refresh=False)
          logging.info("step %d: %s", done, " ".join(f"{k}={v:.4g}" for k, v in scalars.items()))
          check_nonfinite(done)
        if done % d.checkpoint_every == 0:
          check_nonfinite(done)
          save(done)
      check_nonfinite(int(jax.device_get(state.step)))
      final = int(jax.device_get(state.step))
      save(final, force=True)
  finally:
    # Finish in-flight (async) checkpoint writes even when the run fails.
    if bar is not None:
      bar.close()
    ckpt.close()
  if preempted:
    logging.warning("distill: stop signal received; saved step %d to %s. Re-run the same "
                    "command to resume.", final, ckpt.directory)
  elif final >= d.num_steps:
    export_student(config, state, workdir, source)
  return state


def export_student(config, state, workdir: str, source) -> str:
  """Writes the distilled student (no soft-align weights) for fine-tuning."""
  out = os.path.join(workdir, "student")
  if jax.process_index() == 0:
    meta = {"kind": "distilled_student", "student": export_lib.student_dict(config.student),
            "teacher_classes": int(config.student.num_classes),
            "step": int(jax.device_get(state.step)), "data_source": source.name,
            "teacher_layers": list(config.distill.teacher_layers),
            "student_layers": list(config.distill.student_layers),
            "rl_weight": float(config.distill.rl_weight),
            "lambdas": list(config.distill.lambdas)}
    if config.data.source == "tfrecord":
      from data_pipelines.input_pipeline import load_stats  # pylint: disable=import-outside-toplevel
      mean, std = load_stats(config.data.path)
      meta["feature_mean"], meta["feature_std"] = mean.tolist(), std.tolist()
    export_lib.save(out, state.params["student"], meta)
    logging.info("distill: exported the student to %s", out)
  return out
