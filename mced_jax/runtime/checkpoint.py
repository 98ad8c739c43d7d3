"""Checkpoints: periodic saves, keep-N, resume from the work dir.

Each checkpoint holds the train state (sharded arrays, restored straight onto the
mesh) and a small JSON `meta` item (step, input position, a trainer's selection
state), so a re-run of the same command continues with the next batch it would
have read.

Local directories and `gs://` go through orbax (every process writes its own
shards; async saves). orbax 0.12.8 writes arrays only to those two (tensorstore's
file and gcs drivers), so any other URL scheme (s3://, memory://, ...) gets a
portable checkpoint through mced_jax.runtime.fs: the state gathered to every process,
written once by process 0 as msgpack, restored onto the mesh by each process.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from absl import logging

from mced_jax.runtime import fs


def abstract_with_shardings(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


class Checkpointer:

  def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
    self.directory = fs.abspath(directory)
    self._impl = (_Orbax(self.directory, max_to_keep, async_save)
                  if fs.orbax_native(self.directory)
                  else _Portable(self.directory, max_to_keep))

  def latest_step(self) -> int | None:
    return self._impl.latest_step()

  def save(self, step: int, state, meta: dict, force: bool = False) -> bool:
    saved = self._impl.save(step, state, meta, force)
    if saved:
      logging.info("checkpoint: saving step %d to %s", step, self.directory)
    return saved

  def restore(self, abstract_state, step: int | None = None):
    """Restores (state, meta); `abstract_state` holds ShapeDtypeStructs with
    shardings, so arrays come back already laid out on the mesh."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    out = self._impl.restore(abstract_state, step)
    logging.info("checkpoint: restored step %d from %s", step, self.directory)
    return out

  def wait(self):
    self._impl.wait()

  def close(self):
    self._impl.close()


# Replica-parallel saving (orbax's default off GPUs) splits every replicated shard
# between its replicas by slicing it on the device: one compiled program per array
# shape and offset, ~3 s on the first save of the tiny model and 6-13 s in the
# multi-host tests, for arrays too small to gain from parallel writes. Only slices
# of at least this many bytes are still written in parallel.
MIN_REPLICA_PARALLEL_SLICE_BYTES = 1 << 20


@functools.cache
def _register_array_handler(ocp) -> None:
  """Once per process: orbax's handler registry is global."""
  default = ocp.type_handlers.get_type_handler(jax.Array)
  ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(
      array_metadata_store=getattr(default, "_array_metadata_store", None),
      min_slice_bytes_for_replica_parallel=MIN_REPLICA_PARALLEL_SLICE_BYTES), override=True)


class _Orbax:

  def __init__(self, directory, max_to_keep, async_save):
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    self._ocp = ocp
    _register_array_handler(ocp)
    self._mgr = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save),
        item_names=("state", "meta"))

  def latest_step(self):
    return self._mgr.latest_step()

  def save(self, step, state, meta, force):
    ocp = self._ocp
    return self._mgr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, abstract_state, step):
    ocp = self._ocp
    out = self._mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]

  def wait(self):
    self._mgr.wait_until_finished()

  def close(self):
    self._mgr.wait_until_finished()
    self._mgr.close()


class _Portable:
  """<dir>/<step>/state.msgpack + meta.json through mced_jax.runtime.fs."""

  def __init__(self, directory, max_to_keep):
    self.directory, self.max_to_keep = directory, max_to_keep

  def steps(self) -> list[int]:
    return sorted(int(n) for n in fs.listdir(self.directory)
                  if n.isdigit() and fs.exists(fs.join(self.directory, n, "meta.json")))

  def latest_step(self):
    steps = self.steps()
    return steps[-1] if steps else None

  def save(self, step, state, meta, force):
    del force
    import flax.serialization  # pylint: disable=import-outside-toplevel
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    host = jax.tree.map(np.asarray, multihost_utils.process_allgather(state, tiled=True))
    if jax.process_index() == 0:
      d = fs.join(self.directory, str(step))
      fs.write_bytes(fs.join(d, "state.msgpack"), flax.serialization.to_bytes(host))
      fs.write_json(fs.join(d, "meta.json"), meta)  # written last: marks it complete
      for old in self.steps()[:-self.max_to_keep]:
        fs.rmtree(fs.join(self.directory, str(old)))
    return True

  def restore(self, abstract_state, step):
    import flax.serialization  # pylint: disable=import-outside-toplevel
    d = fs.join(self.directory, str(step))
    target = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract_state)
    host = flax.serialization.from_bytes(target, fs.read_bytes(fs.join(d, "state.msgpack")))
    state = jax.tree.map(
        lambda a, x: jax.make_array_from_callback(a.shape, a.sharding, lambda i: x[i]),
        abstract_state, host)
    return state, fs.read_json(fs.join(d, "meta.json"))

  def wait(self):
    pass

  def close(self):
    pass
