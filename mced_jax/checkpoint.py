"""Orbax checkpoints: periodic saves, keep-N, resume from the work dir.

Each checkpoint holds the train state (sharded arrays, restored straight onto the
mesh) and a small JSON `meta` item: the step and the input position, so a re-run
of the same command continues with the next batch it would have read.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:

  def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self._mgr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            enable_async_checkpointing=async_save),
        item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self._mgr.latest_step()

  def save(self, step: int, state, meta: dict, force: bool = False) -> bool:
    saved = self._mgr.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(meta)), force=force)
    if saved:
      logging.info("checkpoint: saving step %d to %s", step, self.directory)
    return saved

  def restore(self, abstract_state, step: int | None = None):
    """Restores (state, meta); `abstract_state` holds ShapeDtypeStructs with
    shardings, so arrays come back already laid out on the mesh."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    out = self._mgr.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      meta=ocp.args.JsonRestore()))
    logging.info("checkpoint: restored step %d from %s", step, self.directory)
    return out["state"], out["meta"]

  def wait(self):
    self._mgr.wait_until_finished()

  def close(self):
    self._mgr.wait_until_finished()
    self._mgr.close()


def abstract_with_shardings(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)
