"""The global batch plan: a pure function of (seed, step) over the examples'
lengths, the same on every host, every example once per epoch (but the largest
bucket's remainder), batches padded to a bucket holding each member."""

import numpy as np
import pytest

from data_pipelines.batch_plan import BatchPlan

BUCKETS = (100, 200, 400)


def lengths(n=103, seed=0):
  return np.random.default_rng(seed).integers(20, 600, size=n)


def test_every_example_once_per_epoch_in_a_bucket_that_holds_it():
  frames = lengths()
  plan = BatchPlan(frames, BUCKETS, 8, seed=1)
  for epoch in range(3):
    seen = []
    for i in range(plan.steps_per_epoch):
      bucket, ids = plan.at(epoch * plan.steps_per_epoch + i)
      assert len(ids) == 8 and bucket in BUCKETS
      assert (np.minimum(frames[ids], BUCKETS[-1]) <= bucket).all()
      seen += ids.tolist()
    assert len(seen) == len(set(seen))  # no example twice in an epoch
    left = set(range(len(frames))) - set(seen)
    assert len(left) < 8  # only one remainder (smaller buckets' carry over)
  assert plan.steps_per_epoch == len(frames) // 8


def test_plan_is_a_pure_function_of_seed_and_step():
  frames = lengths()
  a, b = BatchPlan(frames, BUCKETS, 8, seed=3), BatchPlan(frames, BUCKETS, 8, seed=3)
  for step in (0, 5, 12, 40, 7, 0):  # any order, any host: the same batch
    assert a.at(step)[0] == b.at(step)[0]
    np.testing.assert_array_equal(a.at(step)[1], b.at(step)[1])
  c = BatchPlan(frames, BUCKETS, 8, seed=4)
  assert any(not np.array_equal(a.at(s)[1], c.at(s)[1]) for s in range(5))
  # epochs differ from each other
  n = a.steps_per_epoch
  assert not all(np.array_equal(a.at(s)[1], a.at(s + n)[1]) for s in range(n))


def test_too_few_examples_is_a_clear_error():
  with pytest.raises(ValueError, match="make no batch of 16"):
    BatchPlan(lengths(10), BUCKETS, 16)
