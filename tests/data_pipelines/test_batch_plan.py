"""The global batch plan over slots (shards) and frame buckets: a pure function of
(seed, step); slot j fills rows [j*b, (j+1)*b) from its own examples; each step
has one bucket group, whose pad length holds its members; every example of a
stream comes once per wrap; hosts read only their slots."""

import numpy as np
import pytest

from data_pipelines.batch_plan import BatchPlan

BUCKETS = (100, 200, 400)


def examples(n=240, slots=4, seed=0):
  rng = np.random.default_rng(seed)
  frames = rng.integers(20, 600, size=n)
  bucket = np.minimum(np.searchsorted(BUCKETS, frames), len(BUCKETS) - 1)
  return frames, rng.integers(0, slots, size=n), bucket


def test_rows_come_from_their_slot_in_one_padded_group_once_per_wrap():
  frames, slot, bucket = examples()
  plan = BatchPlan(slot, bucket, BUCKETS, 4, 16, seed=1, max_frames=400)
  assert plan.per_slot == 4 and plan.steps_per_epoch > 0
  seen = {}
  for step in range(3 * plan.steps_per_epoch):
    pad, ids = plan.at(step)
    g = plan.group_at(step)
    assert pad == plan.pad[g] and len(ids) == 16
    for j in range(4):
      rows = ids[4 * j:4 * (j + 1)]
      assert (slot[rows] == j).all()  # slot j's rows are its own examples
      assert set(bucket[rows]) <= set(plan.groups[g])  # one bucket group per step
      assert (np.minimum(frames[rows], 400) <= pad).all()  # the pad length holds them
      seen.setdefault((j, g), []).extend(rows.tolist())
  for (j, g), got in seen.items():  # a stream wraps only after all its examples came
    size = int(plan.stream_size[j, g])
    for w in range(len(got) // size):
      assert len(set(got[w * size:(w + 1) * size])) == size


def test_plan_is_a_pure_function_of_seed_and_step():
  _, slot, bucket = examples()
  a, b = BatchPlan(slot, bucket, BUCKETS, 4, 16, seed=3), BatchPlan(slot, bucket, BUCKETS, 4, 16,
                                                                      seed=3)
  for step in (0, 5, 12, 40, 7, 0):  # any order, any host: the same batch
    assert a.at(step)[0] == b.at(step)[0]
    np.testing.assert_array_equal(a.at(step)[1], b.at(step)[1])
  c = BatchPlan(slot, bucket, BUCKETS, 4, 16, seed=4)
  assert any(not np.array_equal(a.at(s)[1], c.at(s)[1]) for s in range(5))
  n = a.steps_per_epoch  # epochs differ from each other
  assert not all(np.array_equal(a.at(s)[1], a.at(s + n)[1]) for s in range(n))
  # a host asks only for its slots; their rows are the full plan's
  pad, mine = a.at(9, slots=[1, 2])
  np.testing.assert_array_equal(mine[4:12], a.at(9)[1][4:12])
  assert (mine[:4] == -1).all() and (mine[12:] == -1).all()
  assert a.slots_of(np.arange(4, 12)) == [1, 2] and a.slots_of([5]) == [1]


def test_sparse_buckets_merge_upwards_and_errors_are_clear():
  frames, slot, bucket = examples(n=60)
  bucket = np.where(np.arange(60) < 3, 0, np.maximum(bucket, 1))  # 3 examples in bucket 0
  plan = BatchPlan(slot, bucket, BUCKETS, 4, 8, max_frames=400)
  assert plan.groups[0][0] == 0 and len(plan.groups[0]) >= 2  # bucket 0 joined bucket 1
  assert plan.pad[-1] == 400
  with pytest.raises(ValueError, match="multiple of the dataset's shards"):
    BatchPlan(slot, bucket, BUCKETS, 4, 10)
  with pytest.raises(ValueError, match="make no batch of 64"):
    BatchPlan(slot, bucket, BUCKETS, 4, 64)
