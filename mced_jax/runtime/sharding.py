"""Device mesh, partition rules and global batches.

The mesh has two axes, `data` and `fsdp`; the batch is split over both, so every
device processes its own examples. Parameters and Adam moments are sharded over
`fsdp` (each array of >= 4096 elements along its largest divisible dimension) and
all-gathered for compute: with fsdp = F a device holds ~1/F of the trainable
state. There is no tensor-parallel axis: the student (d512) and a BERT-base
teacher are small enough that splitting their matmuls would cost more in
collectives than it saves. The frozen teacher is replicated.

Multi-slice / multi-node: `dcn_data` > 1 builds a hybrid mesh
(mesh_utils.create_hybrid_device_mesh) whose `data` axis spans slices or nodes
over the data-centre network (DCN), while `fsdp` stays inside one slice/node
(fast ICI/NVLink), where its all-gathers belong.

Global batches are built from the rows each process holds: `host_rows` says
which rows of a global batch this process's devices own (checked at start-up to
split the batch evenly and exactly), each process loads just those rows, and
`global_batch` places them on its devices.
"""

from __future__ import annotations

import itertools
import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA, FSDP = "data", "fsdp"
_WARM_CALLS = itertools.count()  # unique barrier names
BATCH_AXES = (DATA, FSDP)


def make_mesh(data: int = -1, fsdp: int = 1, dcn_data: int = 1, devices=None) -> Mesh:
  """A (data, fsdp) mesh over `devices` (default: all); data=-1 takes what fsdp
  leaves. With dcn_data > 1 the data axis is split across that many slices/nodes
  (processes on CPU)."""
  devices = list(devices) if devices is not None else jax.devices()
  n = len(devices)
  if fsdp < 1 or n % fsdp:
    raise ValueError(f"mesh.fsdp={fsdp} does not divide the {n} available devices")
  if data == -1:
    data = n // fsdp
  if data * fsdp != n:
    raise ValueError(f"mesh {data}x{fsdp} needs {data * fsdp} devices, but {n} are available")
  if dcn_data < 1 or data % dcn_data:
    raise ValueError(f"mesh.dcn_data={dcn_data} must divide the data axis ({data})")
  if dcn_data == 1:
    return jax.make_mesh((data, fsdp), BATCH_AXES, axis_types=(AxisType.Auto,) * 2,
                         devices=devices)
  from jax.experimental import mesh_utils  # pylint: disable=import-outside-toplevel
  # Slices are the granules on TPU pods; elsewhere (GPU nodes, CPU processes) each
  # process is one.
  by_slice = hasattr(devices[0], "slice_index") and devices[0].platform == "tpu"
  grid = mesh_utils.create_hybrid_device_mesh((data // dcn_data, fsdp), (dcn_data, 1),
                                              devices, process_is_granule=not by_slice)
  return Mesh(grid, BATCH_AXES, axis_types=(AxisType.Auto,) * 2)


def from_config(mesh_cfg, devices=None) -> Mesh:
  """The mesh of `config.mesh`; `mesh.devices` > 0 takes only the first N devices
  (one-process jobs: e.g. a small experiment beside others on one host)."""
  n = mesh_cfg.get("devices", -1)
  if devices is None and n > 0:
    if jax.process_count() > 1:
      raise ValueError("mesh.devices selects devices of a one-process job; a multi-host "
                       "job uses every device (leave mesh.devices=-1)")
    if n > jax.device_count():
      raise ValueError(f"mesh.devices={n} but only {jax.device_count()} devices exist")
    devices = jax.devices()[:n]
  mesh = make_mesh(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.get("dcn_data", 1), devices)
  warm_collectives(mesh)  # before any process can fall 30 s behind in a compile
  return mesh


def warm_collectives(mesh: Mesh, timeout_s: int = 900) -> None:
  """Builds the cross-process communicators of every group of `mesh` now.

  Gloo (CPU clusters) builds a communicator for a device group at the first
  computation that reduces over that group, and waits only 30 s there for the
  other processes; a process still compiling a step (a loaded host can take
  longer) then brings the whole job down. Here all processes first meet at a
  coordination-service barrier that waits `timeout_s`, and one psum over each
  group of mesh axes builds the communicators while they are in step; later
  computations over the same groups reuse them, however far apart the processes
  arrive. A no-op in one process and on accelerators (their collectives do not
  time out this way).
  """
  if jax.process_count() == 1 or mesh.devices.flat[0].platform != "cpu":
    return
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  client = distributed.global_state.client
  if client is not None:  # every process makes the same meshes in the same order
    client.wait_at_barrier(f"mced_jax/warm_collectives/{next(_WARM_CALLS)}",
                           timeout_s * 1000)

  def groups(x):
    return (jax.lax.psum(x, DATA) + jax.lax.psum(x, FSDP) + jax.lax.psum(x, BATCH_AXES))

  n = batch_parallelism(mesh)
  x = jax.make_array_from_callback((n,), batch_sharding(mesh),
                                   lambda idx: np.ones(n, np.float32)[idx])
  out = jax.jit(jax.shard_map(groups, mesh=mesh, in_specs=P(BATCH_AXES),
                              out_specs=P(BATCH_AXES)))(x)
  jax.block_until_ready(out)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over (data, fsdp), the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def batch_parallelism(mesh: Mesh) -> int:
  return mesh.shape[DATA] * mesh.shape[FSDP]


def fsdp_spec(shape, fsdp_size: int, min_size: int = 2 ** 12) -> P:
  """Shards the largest dimension divisible by the fsdp axis; small arrays stay
  replicated (sharding them costs more in collectives than it saves)."""
  if fsdp_size == 1 or math.prod(shape) < min_size:
    return P()
  for i in sorted(range(len(shape)), key=lambda i: -shape[i]):
    if shape[i] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[i] = FSDP
      return P(*spec)
  return P()


def state_shardings(abstract_tree, mesh: Mesh):
  """NamedShardings for a pytree of arrays/ShapeDtypeStructs by the FSDP rule.

  The rule depends on shape alone, so optimizer moments (same shapes as their
  parameters) land on the same devices as the parameters they update.
  """
  size = mesh.shape[FSDP]

  def rule(x):
    if size == 1 or not hasattr(x, "shape"):
      return replicated(mesh)
    return NamedSharding(mesh, fsdp_spec(tuple(x.shape), size))

  return jax.tree.map(rule, abstract_tree)


def check_batch(global_batch: int, mesh: Mesh) -> None:
  """The batch splits evenly over the batch axes and the processes, and each
  process's devices hold exactly its even share of rows."""
  d = batch_parallelism(mesh)
  if global_batch % d:
    raise ValueError(f"global batch size {global_batch} is not divisible by the mesh's "
                     f"batch axes (data x fsdp = {d} devices); pick a multiple of {d}")
  procs = sorted({dv.process_index for dv in mesh.devices.flat})
  if global_batch % len(procs):
    raise ValueError(f"global batch size {global_batch} is not divisible by the "
                     f"{len(procs)} processes")
  owner = np.full(global_batch, -1)
  for dev, idx in batch_sharding(mesh).devices_indices_map((global_batch,)).items():
    rows = np.arange(global_batch)[idx[0]]
    if (owner[rows] >= 0).any():
      raise ValueError("the batch sharding puts a row on two devices; the batch must be "
                       f"split over {BATCH_AXES} only")
    owner[rows] = dev.process_index
  per = global_batch // len(procs)
  counts = np.array([(owner == p).sum() for p in procs])
  if (owner < 0).any() or (counts != per).any():
    raise ValueError(f"the mesh gives processes {counts.tolist()} rows of a global batch of "
                     f"{global_batch}; each must feed exactly {per} (check mesh.dcn_data and "
                     "the device order)")


def host_rows(mesh: Mesh, global_batch: int, process_index: int | None = None) -> np.ndarray:
  """Sorted rows of a global batch held by the devices of one process (default:
  this one): the rows that process loads and feeds."""
  p = jax.process_index() if process_index is None else process_index
  rows = [np.arange(global_batch)[idx[0]]
          for dev, idx in batch_sharding(mesh).devices_indices_map((global_batch,)).items()
          if dev.process_index == p]
  return np.unique(np.concatenate(rows)) if rows else np.zeros(0, np.int64)


def mesh_processes(mesh: Mesh) -> int:
  """How many processes own devices of this mesh."""
  return len({d.process_index for d in mesh.devices.flat})


def global_batch(local: dict, rows, mesh: Mesh) -> dict:
  """Global jax.Arrays, batch-sharded, from this process's rows.

  `local[k]` holds the rows `rows` (sorted, as `host_rows` gives them) of the
  global batch; every local device receives its own slice of them.
  """
  sharding = batch_sharding(mesh)
  rows = np.asarray(rows)
  size = len(rows) * mesh_processes(mesh)
  out = {}
  for k, v in local.items():
    v = np.asarray(v)
    if v.shape[0] != len(rows):
      raise ValueError(f"batch field {k!r} has {v.shape[0]} rows, this process feeds "
                       f"{len(rows)}")
    gshape = (size,) + v.shape[1:]
    arrays = []
    for dev, idx in sharding.addressable_devices_indices_map(gshape).items():
      want = np.arange(size)[idx[0]]
      lo = int(np.searchsorted(rows, want[0]))
      arrays.append(jax.device_put(v[lo:lo + len(want)], dev))
    out[k] = jax.make_array_from_single_device_arrays(gshape, sharding, arrays)
  return out
