"""Files of prepared datasets, local or at a URL.

Everything goes through mced_jax.runtime.fs (local disks, gs:// s3:// az:// through
etils, other fsspec URLs such as memory://), except TensorFlow's own filesystems
that nothing else reads (ram://), which go through tf.io.gfile. TensorFlow is
imported only for those.
"""

from __future__ import annotations

import os

from mced_jax.runtime import fs

TF_ONLY = ("ram",)  # schemes only TensorFlow's filesystem layer knows
TF_DATA = ("gs", "ram", "file")  # schemes tf.data reads natively (beside local paths)


def _tf_only(path: str) -> bool:
  return fs.scheme(path) in TF_ONLY


def tf_data_readable(path: str) -> bool:
  """Whether tf.data can stream files from here (local, gs://, ram://)."""
  return not fs.is_url(path) or fs.scheme(path) in TF_DATA


def _gfile():
  from data_pipelines import tf_compat  # pylint: disable=import-outside-toplevel
  return tf_compat.tensorflow().io.gfile


def exists(path: str) -> bool:
  return _gfile().exists(path) if _tf_only(path) else fs.exists(path)


def isdir(path: str) -> bool:
  return _gfile().isdir(path) if _tf_only(path) else fs.isdir(path)


def listdir(path: str) -> list[str]:
  if _tf_only(path):
    return sorted(n.rstrip("/") for n in _gfile().listdir(path))
  return fs.listdir(path)


def read_bytes(path: str) -> bytes:
  if _tf_only(path):
    with _gfile().GFile(path, "rb") as f:
      return f.read()
  return fs.read_bytes(path)


def read_text(path: str) -> str:
  return read_bytes(path).decode("utf-8")


def read_json(path: str):
  import json  # pylint: disable=import-outside-toplevel
  return json.loads(read_text(path))


def write_bytes(path: str, data: bytes) -> None:
  if _tf_only(path):
    _gfile().makedirs(fs.dirname(path))
    with _gfile().GFile(path, "wb") as f:
      f.write(data)
  else:
    fs.write_bytes(path, data)


def size(path: str) -> int:
  if not fs.is_url(path) or fs.is_local(path):
    return os.path.getsize(path[len("file://"):] if path.startswith("file://") else path)
  if fs.scheme(path) in TF_DATA:
    return int(_gfile().stat(path).length)
  return len(fs.read_bytes(path))


def upload_tree(local_dir: str, url: str, skip=()) -> None:
  """Copies a local directory to a URL, file by file (names in `skip` stay behind)."""
  for root, _, names in os.walk(local_dir):
    rel = os.path.relpath(root, local_dir)
    if rel.split(os.sep)[0] in skip:
      continue
    for n in names:
      src = os.path.join(root, n)
      dst = fs.join(url, *([] if rel == "." else rel.split(os.sep)), n)
      with open(src, "rb") as f:
        write_bytes(dst, f.read())
