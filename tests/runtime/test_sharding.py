"""The (data, fsdp) mesh: the same distillation steps on 1 device and on FSDP
meshes (4x2, 1x8); the batch split over both axes; per-device state shrinking with
fsdp. (Pure data parallelism over 8 devices is the multi-host tests' reference.)"""

import jax
import numpy as np
import pytest

from data_pipelines.synthetic import SyntheticPairs
from mced_jax.perf import benchmark
from mced_jax.runtime import sharding as shd
from mced_jax.train import distill


def widen(cfg):
  # Widths divisible by the fsdp axis, arrays >= 4096 elements: FSDP really shards.
  with cfg.unlocked():
    # fp32 on every CPU: `auto` picks the bf16 recipe where the CPU has bf16 units,
    # and bf16 rounding differs with the reduction order of each mesh (5e-4 after
    # two steps), which would hide what this test checks.
    cfg.dtype = "float32"
    cfg.student.conv_channels = (64, 64, 64, 64)
    cfg.student.d_model = 64
    cfg.student.mlp_dim = 128
  return cfg


def run_steps(config, mesh, n_steps=2):
  dist = distill.build(config, mesh=mesh)
  state, step = dist.spec.create(), dist.make_step()
  rows = shd.host_rows(mesh, 8)
  src = SyntheticPairs(8, config.data.max_frames, config.data.max_tokens,
                       config.teacher.vocab_size, min_frames=config.data.min_frames,
                       min_tokens=config.data.min_tokens)
  losses, per_device, state_bytes = [], None, None
  with jax.set_mesh(mesh):
    for i in range(n_steps):
      batch = shd.global_batch({k: v[rows] for k, v in src.global_batch_at(i).items()}, rows,
                               mesh)
      per_device = {s.data.shape[0] for s in batch["features"].addressable_shards}
      if i == 0:
        # Per-device train-state bytes, read from the compiled step's memory analysis:
        # its arguments minus the replicated teacher and the per-device batch.
        compiled = step.lower(state, batch, dist.teacher_params).compile()
        state_bytes = (benchmark.memory(compiled)["argument_size_in_bytes"]
                       - benchmark.state_bytes_per_device(dist.teacher_params)
                       - benchmark.state_bytes_per_device(batch))
        assert state_bytes == benchmark.state_bytes_per_device(state)
      state, aux = step(state, batch, dist.teacher_params)
      losses.append(float(aux["loss"]))
  return losses, jax.device_get(state.params), state, per_device, state_bytes


def test_one_device_and_fsdp_meshes_agree_and_fsdp_divides_the_state(tiny_config, capsys):
  assert jax.device_count() == 8, "conftest should fake 8 CPU devices"
  cfg = widen(tiny_config)
  one = run_steps(cfg, shd.make_mesh(1, 1, devices=jax.devices()[:1]))
  fsdp = run_steps(cfg, shd.make_mesh(4, 2))
  full = run_steps(cfg, shd.make_mesh(1, 8))
  for run in (fsdp, full):
    # the batch is split over data x fsdp: one example per device in every mesh
    assert run[3] == {1}
    np.testing.assert_allclose(one[0], run[0], atol=1e-5, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
                 one[1], run[1])
  # FSDP really splits parameters (and Adam moments) over the fsdp axis ...
  for state in (fsdp[2], full[2]):
    specs = [x.sharding.spec for x in jax.tree.leaves((state.params, state.opt_state))]
    assert any(shd.FSDP in tuple(s) for s in specs)
  # ... and per-device state falls to ~1/fsdp (small arrays stay replicated)
  ratios = {2: fsdp[4] / one[4], 8: full[4] / one[4]}
  with capsys.disabled():
    print(f"\ntrain state per device: 1 device {one[4]} B, fsdp=2 {fsdp[4]} B "
          f"({ratios[2]:.3f}x), fsdp=8 {full[4]} B ({ratios[8]:.3f}x)")
  assert 0.5 <= ratios[2] < 0.55 and 0.125 <= ratios[8] < 0.2


def test_fsdp_spec_rules():
  assert shd.fsdp_spec((1024, 512), 2) == shd.P(shd.FSDP, None)
  assert shd.fsdp_spec((7, 4096), 2) == shd.P(None, shd.FSDP)
  assert shd.fsdp_spec((16,), 2) == shd.P()  # small: replicated
  assert shd.fsdp_spec((4097, 3), 2) == shd.P()  # nothing divisible
  assert shd.fsdp_spec((1024, 512), 1) == shd.P()


def test_host_rows_and_global_batch_place_every_row_once():
  mesh = shd.make_mesh(4, 2)
  rows = shd.host_rows(mesh, 16)
  np.testing.assert_array_equal(rows, np.arange(16))  # one process holds every row
  x = np.arange(16 * 3).reshape(16, 3)
  g = shd.global_batch({"x": x}, rows, mesh)["x"]
  np.testing.assert_array_equal(np.asarray(g), x)
  assert {s.data.shape for s in g.addressable_shards} == {(2, 3)}
  with pytest.raises(ValueError, match="this process feeds 16"):
    shd.global_batch({"x": x[:8]}, rows, mesh)


def test_bad_mesh_and_batch_are_clear_errors():
  with pytest.raises(ValueError, match="does not divide"):
    shd.make_mesh(-1, 3)
  with pytest.raises(ValueError, match="needs 6 devices"):
    shd.make_mesh(3, 2)
  with pytest.raises(ValueError, match="must divide the data axis"):
    shd.make_mesh(8, 1, dcn_data=3)
  with pytest.raises(ValueError, match=r"not divisible by the mesh's batch axes \(data x fsdp"):
    shd.check_batch(12, shd.make_mesh(4, 2))


def test_bf16_on_cpu_uses_cpu_bf16_and_tracks_fp32(tiny_config):
  """dtype=bfloat16 on CPU resolves to the cpu_bf16 recipe (fp32 modules, bf16
  matmul operands); on an FSDP mesh its losses follow the fp32 run's."""
  cfg = widen(tiny_config)
  with cfg.unlocked():
    cfg.dtype = "float32"
  ref = run_steps(cfg, shd.make_mesh(1, 1, devices=jax.devices()[:1]), n_steps=3)
  with cfg.unlocked():
    cfg.dtype = "bfloat16"
  dist = distill.build(cfg, mesh=shd.make_mesh(4, 2))
  assert dist.policy.cpu_bf16 and dist.student.dtype == np.float32
  assert jax.tree.leaves(dist.teacher_params)[0].dtype == np.dtype("bfloat16")
  bf = run_steps(cfg, shd.make_mesh(4, 2), n_steps=3)
  np.testing.assert_allclose(bf[0], ref[0], rtol=3e-2)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(bf[1]))
