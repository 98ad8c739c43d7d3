"""Device mesh, partition rules and global batches.

The mesh has two axes: `data` (the batch is split over it) and `model` (student
parameters and optimizer state are FSDP-sharded over it when `fsdp` is on;
otherwise everything is replicated). The frozen teacher is replicated: it is read,
never updated, and at BERT-base size fits every accelerator.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA, MODEL = "data", "model"


def make_mesh(data: int = -1, model: int = 1, devices=None) -> Mesh:
  """A (data, model) mesh over `devices` (default: all); data=-1 takes what model
  leaves."""
  n = len(devices) if devices is not None else jax.device_count()
  if model < 1 or n % model:
    raise ValueError(f"mesh.model={model} does not divide the {n} available devices")
  if data == -1:
    data = n // model
  if data * model != n:
    raise ValueError(f"mesh {data}x{model} needs {data * model} devices, "
                     f"but {n} are available")
  return jax.make_mesh((data, model), (DATA, MODEL), axis_types=(AxisType.Auto,) * 2,
                       devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over `data`, the rest replicated."""
  return NamedSharding(mesh, P(DATA))


def fsdp_spec(shape, model_size: int, min_size: int = 2 ** 12) -> P:
  """Shards the largest dimension divisible by the model axis; small arrays stay
  replicated (sharding them costs more in collectives than it saves)."""
  if model_size == 1 or math.prod(shape) < min_size:
    return P()
  order = sorted(range(len(shape)), key=lambda i: -shape[i])
  for i in order:
    if shape[i] % model_size == 0:
      spec = [None] * len(shape)
      spec[i] = MODEL
      return P(*spec)
  return P()


def state_shardings(abstract_tree, mesh: Mesh, fsdp: bool):
  """NamedShardings for a pytree of arrays/ShapeDtypeStructs by the FSDP rule.

  The rule depends on shape alone, so optimizer moments (same shapes as their
  parameters) land on the same devices as the parameters they update.
  """
  model_size = mesh.shape[MODEL]

  def rule(x):
    if not fsdp or not hasattr(x, "shape"):
      return replicated(mesh)
    return NamedSharding(mesh, fsdp_spec(tuple(x.shape), model_size))

  return jax.tree.map(rule, abstract_tree)


def check_batch_divisible(global_batch: int, mesh: Mesh) -> None:
  d = mesh.shape[DATA]
  if global_batch % d:
    raise ValueError(f"global batch size {global_batch} is not divisible by the mesh's "
                     f"data axis ({d} devices); pick a multiple of {d}")
  if global_batch % jax.process_count():
    raise ValueError(f"global batch size {global_batch} is not divisible by the "
                     f"{jax.process_count()} processes")


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Assembles per-process numpy batches into global jax.Arrays sharded over `data`.

  Each process passes its own slice (global_batch / process_count examples); with
  one process this is a plain sharded device_put.
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
