"""TFRecord shards streamed by tf.data: each host reads only its own shards
(measured from the kernel's read counter, in separate processes), a dataset at a
URL is read in place, and ArrayRecord at a URL is refused at start-up."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import demo
from data_pipelines.adapters import read_manifest
from data_pipelines.dataset import PreparedDataset
from data_pipelines.prepare import PrepareOptions, prepare
from mced_jax.layout import Layout
from mced_jax.train import distill

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPTS = dict(name="demo", num_workers=2, progress=False, filter_pairs=True, num_shards=2,
            frame_buckets=(260, 400), max_frames=400)

# One host's reader over an epoch's worth of steps, in its own process; prints the
# bytes its threads read (rchar in /proc/self/io) while streaming.
HOST = r"""
import json, sys
import numpy as np
from data_pipelines.loaders import make_loader
from data_pipelines.dataset import PreparedDataset
path, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ds = PreparedDataset(path)
# a small shuffle buffer: reading keeps pace with the steps (a buffer as large as a
# stream would read each wrap whole before its first example)
plan, loader, kind = make_loader(ds, ds.index.rows_of("train+validation+test"), 8,
                                 np.arange(lo, hi), seed=0, max_frames=400, max_tokens=24,
                                 threads=2, shuffle_buffer=4)
def rchar():
  return int(next(l for l in open("/proc/self/io") if l.startswith("rchar")).split()[1])
it = loader.iterator(0)
next(it)  # builds the pipelines (TensorFlow's own lazy imports read files too)
r0 = rchar()
for _ in range(6 * plan.steps_per_epoch):
  next(it)
print(json.dumps({"read": rchar() - r0, "reader": kind, "epochs": 6}))
"""


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfr")
  manifest = demo.generate(str(root / "corpus"), per_class_per_voice=2, progress=False)
  out = str(root / "tfrecord")
  prepare(read_manifest(manifest), out, PrepareOptions(file_format="tfrecord", **OPTS))
  return {"path": out, "manifest": manifest}


def test_each_of_two_hosts_reads_its_share_of_the_shard_bytes(tfrecords):
  ds = PreparedDataset(tfrecords["path"])
  total = sum(os.path.getsize(p) for part in ds.report["part_dirs"] for p in ds.part_files(part))
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-c", HOST, tfrecords["path"], str(lo), str(hi)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for lo, hi in ((0, 4), (4, 8), (0, 8))]
  got = []
  for p in procs:
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    got.append(json.loads(out.strip().splitlines()[-1]))
  assert all(g["reader"] == "tf.data" for g in got)
  share = [g["read"] / (g["epochs"] * total) for g in got]
  # rows 0-3 are shard 0, rows 4-7 shard 1: each host streams only its own files
  assert share[0] <= 0.6 and share[1] <= 0.6, share
  # each reads a real share (read-ahead at epoch ends varies by a few records), and
  # one host holding every row reads both halves
  assert share[0] >= 0.25 and share[1] >= 0.25, share
  assert share[2] >= 0.8, share


def test_a_tfrecord_dataset_at_a_url_trains_in_place(tfrecords, tiny_config, tmp_path,
                                                     monkeypatch):
  """Prepared straight into TensorFlow's in-memory filesystem (ram://), read there
  by tf.data; the work dir is an fsspec URL: nothing lands on the local disk."""
  from data_pipelines import tfrecord_reader
  monkeypatch.chdir(tmp_path)  # any local path created would land here
  url = "ram://mced_test/prepared"
  prepare(read_manifest(tfrecords["manifest"]), url, PrepareOptions(file_format="auto", **OPTS))
  ds = PreparedDataset(url)
  assert ds.format == "tfrecord" and ds.path == url  # auto: TFRecord for a URL
  streamed = []
  real = tfrecord_reader.TFRecordLoader.iterator
  monkeypatch.setattr(tfrecord_reader.TFRecordLoader, "iterator",
                      lambda self, start=0: streamed.append(start) or real(self, start))
  with tiny_config.unlocked():
    tiny_config.teacher.vocab_size = 30522
    tiny_config.data.source, tiny_config.data.path = "prepared", url
    tiny_config.data.split, tiny_config.data.max_frames = "train+validation+test", 400
    tiny_config.data.max_tokens = 24
    tiny_config.distill.batch_size, tiny_config.distill.num_steps = 8, 2
  res = distill.train(tiny_config, Layout("memory://tfr_url/run"))
  assert res.status == "done" and int(res.state.step) == 2 and streamed == [0]
  assert all(np.isfinite(np.asarray(x)).all() for x in __import__("jax").tree.leaves(
      res.state.params))
  assert not os.listdir(tmp_path), os.listdir(tmp_path)
  # ArrayRecord at a URL: refused at start-up with what to do instead
  bad = "memory://mced_test/array_record"
  prepare(read_manifest(tfrecords["manifest"]), bad,
          PrepareOptions(file_format="array_record", **OPTS))
  with tiny_config.unlocked():
    tiny_config.data.path = bad
  with pytest.raises(ValueError, match="ArrayRecord shards cannot be opened at a URL.*"
                                       "data.format=tfrecord"):
    distill.train(tiny_config, Layout("memory://tfr_url/run2"))
  assert not os.listdir(tmp_path), os.listdir(tmp_path)
