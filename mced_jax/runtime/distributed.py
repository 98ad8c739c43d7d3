"""Multi-host start-up: jax.distributed from the config or the environment.

  --config.distributed.coordinator_address=HOST:PORT
  --config.distributed.num_processes=N --config.distributed.process_id=I

or the environment variables MCED_COORDINATOR_ADDRESS, MCED_NUM_PROCESSES,
MCED_PROCESS_ID (handy in launch scripts), or --config.distributed.auto=True to let
JAX detect the cluster (TPU pods, SLURM, Open MPI). Must run before anything touches
a device. Process 0 alone writes logs and metrics; every process takes part in
checkpointing and reads its own shard of the data.
"""

from __future__ import annotations

import os

import jax
from absl import logging


def settings(cfg) -> dict:
  env = os.environ
  out = {
      "coordinator_address": env.get("MCED_COORDINATOR_ADDRESS", cfg.coordinator_address),
      "num_processes": int(env.get("MCED_NUM_PROCESSES", cfg.num_processes)),
      "process_id": int(env.get("MCED_PROCESS_ID", cfg.process_id)),
  }
  if out["coordinator_address"] and out["num_processes"] < 1:
    raise ValueError("distributed.coordinator_address is set but num_processes < 1")
  if out["coordinator_address"] and not 0 <= out["process_id"] < out["num_processes"]:
    raise ValueError(f"distributed.process_id={out['process_id']} not in "
                     f"[0, {out['num_processes']})")
  return out


def initialize(cfg) -> bool:
  """Initialises jax.distributed if asked to; returns True when multi-process."""
  s = settings(cfg)
  if cfg.cpu_collectives:
    # CPU-only clusters (and the 2-process test) need a collectives backend.
    jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
  if s["coordinator_address"]:
    jax.distributed.initialize(coordinator_address=s["coordinator_address"],
                               num_processes=s["num_processes"], process_id=s["process_id"],
                               initialization_timeout=cfg.timeout_s)
  elif cfg.auto:
    jax.distributed.initialize()
  else:
    return False
  if cfg.cpu_collectives:
    # Gloo builds a device group's communicator at its first computation and waits
    # only 30 s for the other processes there. This builds the groups of
    # multihost_utils's (processes, local devices) mesh, used by the preemption
    # agreement and checkpoint gathers, while initialize() has the processes in
    # step; the training mesh's groups are built by sharding.warm_collectives.
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices("mced_jax: cpu collectives")
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)  # one process speaks for the job
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


_CALLS = {}


def _client():
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  return distributed.global_state.client


def _unique(name: str) -> str:
  """Every process calls these in the same order: a per-name call counter keeps the
  coordination keys of repeated calls apart."""
  _CALLS[name] = _CALLS.get(name, 0) + 1
  return f"mced_jax/{name}/{_CALLS[name]}"


def barrier(name: str, timeout_s: int = 900) -> None:
  """All processes meet here (e.g. after process 0 wrote a file the others read)."""
  if jax.process_count() == 1 or _client() is None:
    return
  _client().wait_at_barrier(_unique(name), timeout_s * 1000)


def agree(name: str, value: str, what: str, timeout_s: int = 900) -> None:
  """Every process states `value`; if they differ, every process stops with a
  message naming which processes saw which value."""
  if jax.process_count() == 1 or _client() is None:
    return
  client, key = _client(), _unique(name)
  client.key_value_set(f"{key}/{jax.process_index()}", value)
  client.wait_at_barrier(key, timeout_s * 1000)
  values = [client.blocking_key_value_get(f"{key}/{i}", timeout_s * 1000)
            for i in range(jax.process_count())]
  if len(set(values)) > 1:
    seen = {}
    for i, v in enumerate(values):
      seen.setdefault(v, []).append(i)
    raise ValueError(f"{what} differs between processes: " + "; ".join(
        f"process(es) {ps} see {v}" for v, ps in seen.items()) + ". Every host must read the "
        "same prepared dataset (the same files; re-copy it, or read it from one bucket).")
