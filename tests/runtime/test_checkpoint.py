"""Checkpoint saves on a mesh: small replicated arrays are written without a
compiled program each (orbax's replica-parallel slicing is kept for large ones),
and the state comes back equal."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mced_jax.runtime import checkpoint


def _compiles_during(fn) -> int:
  count = []

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      count.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    fn()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return len(count)


def test_small_replicated_arrays_save_without_compiling_and_restore_equal(tmp_path):
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "fsdp"))
  shardings = {"w": NamedSharding(mesh, P("fsdp", None)), "b": NamedSharding(mesh, P()),
               "ln": NamedSharding(mesh, P(None)), "big": NamedSharding(mesh, P(None, "fsdp"))}
  shapes = {"w": (64, 48), "b": (48,), "ln": (7,),
            # 4 MiB per shard, 1 MiB per replica slice: still written replica-parallel
            "big": (1024, 2048)}
  state = {k: jax.device_put(jnp.arange(np.prod(s), dtype=jnp.float32).reshape(s) / 7,
                             shardings[k]) for k, s in shapes.items()}
  small = {k: v for k, v in state.items() if k != "big"}
  ck = checkpoint.Checkpointer(str(tmp_path / "small"), async_save=False)
  assert _compiles_during(lambda: ck.save(1, small, {"step": 1}, force=True)) == 0
  ck.close()
  # the large array's slices are cut on the device, as orbax does by default
  ck_big = checkpoint.Checkpointer(str(tmp_path / "big"), async_save=False)
  assert _compiles_during(lambda: ck_big.save(1, state, {"step": 1}, force=True)) > 0
  ck_big.close()
  abstract = checkpoint.abstract_with_shardings(state, shardings)
  got, meta = checkpoint.Checkpointer(str(tmp_path / "big")).restore(abstract)
  assert meta == {"step": 1}
  for k in state:
    assert got[k].sharding == shardings[k]
    np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(state[k]))
