"""The training kit: one train state, one optimizer, one jitted step, one loop.

A trainer (distill, finetune, teacher_cls, teacher_mlm) provides only
  * its loss        loss_fn(params, batch, rng, *extra) -> (loss, aux dict),
  * its batches     batches(start_step) -> iterator of global batches,
  * its evaluation  evaluate(state, step, meta, train_means) -> scalars (optional),
and the kit does the rest: the sharded `jax.jit` step with donation, the NaN/Inf
guard and the precision scope; resume from the newest checkpoint; periodic
logging, evaluation and checkpoints; the multi-host preemption agreement; the
progress bar; throughput that excludes compilation; JSONL + TensorBoard metrics.

To change the optimizer for every stage, edit `make_optimizer`; the step is
`make_train_step`; the loop is `run`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from mced_jax.runtime import checkpoint as ckpt_lib
from mced_jax.runtime import periodic
from mced_jax.runtime import preemption
from mced_jax.runtime import sharding as shd
from mced_jax.runtime import writers


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any  # fp32 master weights
  opt_state: Any
  # Steps whose loss or gradient was NaN/Inf: their update was not applied.
  nonfinite_steps: jax.Array


# ---------------------------------------------------------------- optimizer
def lr_schedule(learning_rate: float, total_steps: int, warmup_steps: int = 0,
                end_learning_rate: float = 0.0) -> optax.Schedule:
  """Linear warmup from 0 (if any), then linear decay to end_learning_rate."""
  decay = optax.linear_schedule(learning_rate, end_learning_rate,
                                max(total_steps - warmup_steps, 1))
  if warmup_steps <= 0:
    return decay
  warm = optax.linear_schedule(0.0, learning_rate, warmup_steps)
  return optax.join_schedules([warm, decay], [warmup_steps])


def make_optimizer(*, learning_rate: float, total_steps: int, warmup_steps: int = 0,
                   end_learning_rate: float = 0.0, b1: float = 0.9, b2: float = 0.999,
                   weight_decay: float = 0.01, grad_clip: float = 1.0):
  """AdamW (weight decay on matrices only) after global-norm clipping; returns
  (transformation, schedule)."""
  schedule = lr_schedule(learning_rate, total_steps, warmup_steps, end_learning_rate)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  tx = optax.chain(
      optax.clip_by_global_norm(grad_clip) if grad_clip > 0 else optax.identity(),
      optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask))
  return tx, schedule


# ---------------------------------------------------------------- state
def _new_state(params, tx) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    nonfinite_steps=jnp.zeros((), jnp.int32))


@dataclasses.dataclass
class StateSpec:
  """How to make (or restore) a train state in its sharded layout."""

  abstract: Any  # ShapeDtypeStructs with shardings: the restore target
  shardings: Any
  create: Callable[[], TrainState]


def state_spec(params_or_init, tx, mesh, rng=None) -> StateSpec:
  """`params_or_init`: a params pytree (host or device arrays) or a function
  rng -> params run under jit (initialised directly in the sharded layout)."""
  if callable(params_or_init):
    make = lambda r: _new_state(params_or_init(r), tx)
    abstract = jax.eval_shape(make, rng)
    shardings = shd.state_shardings(abstract, mesh)
    create = lambda: jax.jit(make, out_shardings=shardings)(rng)
  else:
    params = params_or_init
    abstract = jax.eval_shape(lambda p: _new_state(p, tx), params)
    shardings = shd.state_shardings(abstract, mesh)
    create = lambda: jax.jit(lambda p: _new_state(p, tx), out_shardings=shardings)(params)
  return StateSpec(ckpt_lib.abstract_with_shardings(abstract, shardings), shardings, create)


# ---------------------------------------------------------------- step
def make_train_step(loss_fn: Callable, tx, schedule, *, mesh, state_shardings, policy,
                    rng_seed: int, extra_shardings=()):
  """jit(step)(state, batch, *extra) -> (state, aux): batch split over the mesh's
  batch axes, state donated, `extra` (e.g. frozen teacher weights) read-only.

  A NaN/Inf loss or gradient never reaches the weights: such a step keeps the old
  parameters and optimizer state and is counted in `nonfinite_steps`. It is a
  `lax.cond`, not an elementwise select over every weight: only the taken branch
  runs, and nothing syncs with the host.
  """
  base_rng = jax.random.PRNGKey(rng_seed)
  rep = shd.replicated(mesh)

  def step(state: TrainState, batch, *extra):
    with policy.scope():
      rng = jax.random.fold_in(base_rng, state.step)
      (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng,
                                                                  *extra)
      grad_norm = optax.tree.norm(grads)
      finite = jnp.isfinite(aux["loss"]) & jnp.isfinite(grad_norm)

      def apply_update(_):
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return optax.apply_updates(state.params, updates), opt_state

      params, opt_state = jax.lax.cond(finite, apply_update,
                                       lambda _: (state.params, state.opt_state), None)
    aux = dict(aux, grad_norm=grad_norm, lr=schedule(state.step),
               nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         nonfinite_steps=aux["nonfinite_steps"]), aux

  return jax.jit(step, in_shardings=(state_shardings, shd.batch_sharding(mesh),
                                     *extra_shardings),
                 out_shardings=(state_shardings, rep), donate_argnums=(0,))


def eval_fn(fn: Callable, mesh, policy):
  """jit(fn) under the precision scope, outputs replicated (every process can
  read the whole result)."""

  def wrapped(*args):
    with policy.scope():
      return fn(*args)

  return jax.jit(wrapped, out_shardings=shd.replicated(mesh))


# ---------------------------------------------------------------- loop
@dataclasses.dataclass
class LoopConfig:
  num_steps: int
  stop_after: int = -1  # stop (with a checkpoint) after this step; -1: run to num_steps
  log_every: int = 10
  checkpoint_every: int = 0  # 0: only at the end and on preemption
  keep_checkpoints: int = 3
  eval_every: int = 0  # 0: evaluate only at the end (if an evaluate function is given)
  on_nonfinite: str = "skip"  # or "stop"
  preemption_check_every: int = 10
  examples_per_step: int = 0
  progress: bool = True

  @classmethod
  def from_section(cls, section, **overrides) -> "LoopConfig":
    """The loop fields a trainer's config section has (num_steps, log_every, ...)."""
    names = [f.name for f in dataclasses.fields(cls)]
    return cls(**{**{k: section[k] for k in names if k in section}, **overrides})

  def __post_init__(self):
    if self.on_nonfinite not in ("skip", "stop"):
      raise ValueError(f"on_nonfinite must be 'skip' or 'stop', got {self.on_nonfinite!r}")
    if self.num_steps < 1:
      raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")


@dataclasses.dataclass
class Result:
  state: TrainState
  meta: dict
  status: str  # "done" | "stopped" (stop_after) | "preempted"
  resumed_from: int | None


def _progress(name: str, total: int, initial: int, enabled: bool):
  if not enabled or jax.process_index() != 0:
    return None
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm(total=total, initial=initial, desc=name, unit="step", dynamic_ncols=True)


def _means(pending: dict) -> dict:
  """Means of the per-step aux values collected since the last evaluation, over
  the finite ones (a skipped NaN/Inf step does not poison an epoch's mean)."""
  out = {}
  for k, vals in pending.items():
    vals = np.asarray(jax.device_get(vals))
    ok = np.isfinite(vals)
    if ok.any():
      out[k] = float(np.mean(vals if ok.all() else vals[ok]))
  return out


def run(name: str, *, step_fn, spec: StateSpec, batches: Callable[[int], Iterator[dict]],
        config: LoopConfig, checkpoint_dir: str, metrics_dir: str, extra=(),
        evaluate: Callable | None = None, meta: dict | None = None,
        mean_keys=("loss",)) -> Result:
  """Runs (or resumes) a training job; returns the final state and meta.

  Resumes from the newest checkpoint in `checkpoint_dir` (state + meta; `batches`
  restarts at that step). An evaluation returning {"early_stop": True} ends the
  run there (status "done"; a re-run does nothing). SIGTERM/SIGINT save and return (status "preempted");
  NaN/Inf steps are never applied and are skipped (counted) or stop the run per
  config.on_nonfinite, so the last good checkpoint is never overwritten. Keys of a
  batch starting with "count_" are host-side counters (summed and logged, not fed).
  """
  c = config
  ckpt = ckpt_lib.Checkpointer(checkpoint_dir, c.keep_checkpoints)
  resumed = ckpt.latest_step()
  meta = dict(meta or {})
  if resumed is not None:
    state, saved = ckpt.restore(spec.abstract)
    meta.update(saved)
  else:
    state = spec.create()
  loop = meta.pop("_loop", {"pending": {}, "counters": {}})
  pending = {k: list(v) for k, v in loop["pending"].items()}
  counters = dict(loop["counters"])
  start = int(jax.device_get(state.step))
  end = c.num_steps if c.stop_after < 0 else min(c.num_steps, c.stop_after)
  if meta.get("early_stopped_at") is not None:
    end = start  # an evaluation ended this run early (kept in the checkpoint's meta)
  if start >= end:
    logging.info("%s: already at step %d (target %d), nothing to do", name, start, end)
    ckpt.close()
    return Result(state, meta, "done" if end == c.num_steps or meta.get(
        "early_stopped_at") is not None else "stopped", resumed)
  logging.info("%s: steps %d -> %d", name, start, end)
  writer = writers.MetricWriter(metrics_dir)
  bar = _progress(name, end, start, c.progress)
  nonfinite_seen = int(jax.device_get(state.nonfinite_steps))
  last_saved = [start if resumed == start else None]

  def save(step, force=False):
    if last_saved[0] == step:
      return
    host_pending = {k: [float(x) for x in jax.device_get(v)] for k, v in pending.items()}
    payload = dict(meta, step=step, data_position=step,
                   _loop={"pending": host_pending, "counters": counters})
    if ckpt.save(step, state, payload, force=force):
      last_saved[0] = step
    writer.flush()

  def check_nonfinite(step):
    nonlocal nonfinite_seen
    n = int(jax.device_get(state.nonfinite_steps))
    if n > nonfinite_seen:
      if c.on_nonfinite == "stop":
        raise FloatingPointError(
            f"{name}: non-finite loss or gradient by step {step} ({n} step(s) so far); their "
            f"updates were not applied and the last good checkpoint (step "
            f"{ckpt.latest_step()}) is intact. Set on_nonfinite=skip to skip such steps.")
      logging.warning("%s: %d step(s) with NaN/Inf loss or gradient skipped so far", name, n)
      nonfinite_seen = n

  # Throughput excludes compilation (the first step of every new input shape, one
  # per length bucket, is timed on its own), evaluation and checkpoints.
  chrono = periodic.Chrono(c.examples_per_step)
  log_due, eval_due = periodic.Every(c.log_every, end), periodic.Every(c.eval_every, c.num_steps)
  ckpt_due = periodic.Every(c.checkpoint_every)
  seen = set()
  status, it = "done" if end == c.num_steps else "stopped", batches(start)
  try:
    with preemption.PreemptionGuard(c.preemption_check_every) as guard:
      for step in range(start, end):
        if guard.should_stop(step):
          status = "preempted"
          break
        batch = dict(next(it))
        for k in [k for k in batch if k.startswith("count_")]:
          counters[k[len("count_"):]] = counters.get(k[len("count_"):], 0) + int(batch.pop(k))
        shape = tuple(tuple(v.shape) for v in batch.values())
        if shape not in seen:
          seen.add(shape)
          jax.block_until_ready(state)
          before = chrono.totals["compile"]
          with chrono.phase("compile"):
            state, aux = step_fn(state, batch, *extra)
            jax.block_until_ready(aux)
          took = chrono.totals["compile"] - before
          logging.info("%s: compiled for input shapes %s in %.1f s", name, list(shape)[:1], took)
          writer.write(step + 1, {"compile_s": took, "compiled_shapes": len(seen)})
        else:
          state, aux = step_fn(state, batch, *extra)
          chrono.step()
        for k in mean_keys:
          pending.setdefault(k, []).append(aux[k])
        done = step + 1
        if bar is not None:
          bar.update(1)
        if log_due(done):
          scalars = {k: float(v) for k, v in jax.device_get(aux).items()}
          scalars.update(chrono.report())
          scalars.update(counters)
          writer.write(done, scalars)
          if bar is not None:
            bar.set_postfix(loss=f"{scalars['loss']:.4f}", refresh=False)
          logging.info("%s step %d: %s", name, done,
                       " ".join(f"{k}={v:.4g}" for k, v in scalars.items()))
          check_nonfinite(done)
        if evaluate is not None and eval_due(done):
          with chrono.phase("eval"):
            scalars = dict(evaluate(state, done, meta, _means(pending)) or {})
          pending = {}
          early = bool(scalars.pop("early_stop", False))
          if scalars:
            writer.write(done, scalars)
          if early:  # the evaluation says training is over (early stopping)
            meta["early_stopped_at"], status = done, "done"
            logging.info("%s: early stop at step %d", name, done)
            break
        if ckpt_due(done):
          check_nonfinite(done)
          with chrono.phase("checkpoint"):
            save(done)
      final = int(jax.device_get(state.step))
      check_nonfinite(final)
      save(final, force=True)
  finally:
    # Finish in-flight (async) checkpoint writes even when the run fails; stop the
    # input pipeline's reader threads.
    if hasattr(it, "close"):
      it.close()
    if bar is not None:
      bar.close()
    writer.close()
    ckpt.close()
  if status == "preempted":
    logging.warning("%s: stop signal received; saved step %d to %s. Re-run the same "
                    "command to resume.", name, final, ckpt.directory)
  return Result(state, meta, status, resumed)
