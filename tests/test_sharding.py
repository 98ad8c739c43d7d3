"""The same distillation steps on 1 device, an 8x1 mesh and a 4x2 FSDP mesh."""

import jax
import numpy as np
import pytest

from mced_jax import sharding as shd
from mced_jax.synthetic import SyntheticPairs
from mced_jax.train import distill


def run_steps(config, mesh, fsdp, n_steps=2):
  with config.unlocked():
    config.mesh.fsdp = fsdp
  dist = distill.build(config, mesh=mesh)
  state = dist.init_state(jax.random.PRNGKey(0))
  step = dist.make_train_step()
  src = SyntheticPairs(8, config.data.max_frames, config.data.max_tokens,
                       config.teacher.vocab_size, min_frames=config.data.min_frames,
                       min_tokens=config.data.min_tokens)
  losses = []
  with jax.set_mesh(mesh):
    for i in range(n_steps):
      state, aux = step(state, dist.teacher_params, shd.global_batch(src.batch_at(i), mesh))
      losses.append(float(aux["loss"]))
  return losses, jax.device_get(state.params), state


def test_one_device_8x1_and_4x2_fsdp_agree(tiny_config):
  assert jax.device_count() == 8, "conftest should fake 8 CPU devices"
  cfg = tiny_config
  # Widths divisible by 2 so FSDP really shards (fsdp_spec needs >= 4096 elements).
  with cfg.unlocked():
    cfg.student.conv_channels = (64, 64, 64, 64)
    cfg.student.d_model = 64
    cfg.student.mlp_dim = 128
  one = run_steps(cfg, shd.make_mesh(1, 1, devices=jax.devices()[:1]), False)
  dp = run_steps(cfg, shd.make_mesh(8, 1), False)
  fsdp = run_steps(cfg, shd.make_mesh(4, 2), True)
  # FSDP really splits some parameters over the model axis.
  specs = [x.sharding.spec for x in jax.tree.leaves(fsdp[2].params)]
  assert any(shd.MODEL in tuple(s) for s in specs)
  for other in (dp, fsdp):
    np.testing.assert_allclose(one[0], other[0], atol=1e-5, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
                 one[1], other[1])


def test_fsdp_spec_rules():
  assert shd.fsdp_spec((1024, 512), 2) == shd.P(shd.MODEL, None)
  assert shd.fsdp_spec((7, 4096), 2) == shd.P(None, shd.MODEL)
  assert shd.fsdp_spec((16,), 2) == shd.P()  # small: replicated
  assert shd.fsdp_spec((4097, 3), 2) == shd.P()  # nothing divisible
  assert shd.fsdp_spec((1024, 512), 1) == shd.P()


def test_bad_mesh_and_batch_are_clear_errors():
  with pytest.raises(ValueError, match="does not divide"):
    shd.make_mesh(-1, 3)
  with pytest.raises(ValueError, match="needs 6 devices"):
    shd.make_mesh(3, 2)
  with pytest.raises(ValueError, match="not divisible by the mesh's data axis"):
    shd.check_batch_divisible(12, shd.make_mesh(8, 1))


def test_bf16_on_cpu_uses_cpu_bf16_and_tracks_fp32(tiny_config):
  """dtype=bfloat16 on CPU resolves to the cpu_bf16 recipe (fp32 modules, bf16
  matmul operands); on a sharded FSDP mesh its losses follow the fp32 run's."""
  cfg = tiny_config
  with cfg.unlocked():
    cfg.student.conv_channels = (64, 64, 64, 64)
    cfg.student.d_model = 64
    cfg.student.mlp_dim = 128
  ref = run_steps(cfg, shd.make_mesh(1, 1, devices=jax.devices()[:1]), False, n_steps=3)
  with cfg.unlocked():
    cfg.dtype = "bfloat16"
  dist = distill.build(cfg, mesh=shd.make_mesh(4, 2))
  assert dist.student.matmul == "cpu_bf16" and dist.teacher.matmul == "cpu_bf16"
  bf = run_steps(cfg, shd.make_mesh(4, 2), True, n_steps=3)
  np.testing.assert_allclose(bf[0], ref[0], rtol=3e-2)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(bf[1]))
