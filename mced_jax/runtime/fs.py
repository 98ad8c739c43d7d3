"""The filesystem layer: every path the project writes goes through here.

A work dir may be a local directory or a URL (`gs://bucket/run`, `s3://...`, or any
fsspec protocol such as `memory://` in tests). Local paths are made absolute;
URLs are never touched by `os.path` (which would turn `gs://b/run` into
`<cwd>/gs:/b/run`). Schemes etils.epath knows (gs, s3, az, hf) go through epath
(tf.io.gfile or fsspec underneath); any other scheme goes to fsspec directly.

Writes of whole files are atomic on local disks (temp file + rename); object
stores replace an object in one write anyway. `append_text` appends locally and
rewrites the object elsewhere (object stores have no append).
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import re
import shutil
from typing import Any

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_EPATH_SCHEMES = ("gs", "s3", "az", "hf")


def scheme(path: str) -> str | None:
  """'gs' for gs://..., None for a local path."""
  m = _URL.match(str(path))
  return m.group(1).lower() if m else None


def is_url(path: str) -> bool:
  return scheme(path) is not None


def is_local(path: str) -> bool:
  return scheme(path) in (None, "file")


def orbax_native(path: str) -> bool:
  """Where orbax 0.12.8 writes arrays itself (tensorstore's file and gcs drivers)."""
  return scheme(path) in (None, "gs")


def _local(path: str) -> str:
  return path[len("file://"):] if str(path).startswith("file://") else path


def abspath(path: str) -> str:
  """Absolute local path; URLs unchanged."""
  path = str(path)
  if is_url(path) and not path.startswith("file://"):
    return path.rstrip("/") if not path.endswith("://") else path
  return os.path.abspath(os.path.expanduser(_local(path)))


def join(base: str, *parts: str) -> str:
  base = str(base)
  if is_url(base) and not base.startswith("file://"):
    return posixpath.join(base, *parts)
  return os.path.join(_local(base), *parts)


def dirname(path: str) -> str:
  path = str(path).rstrip("/")
  return posixpath.dirname(path) if is_url(path) else os.path.dirname(path)


def basename(path: str) -> str:
  return posixpath.basename(str(path).rstrip("/"))


# ---------------------------------------------------------------- backends
def _fsspec(path: str):
  import fsspec  # pylint: disable=import-outside-toplevel
  fs, _ = fsspec.core.url_to_fs(path)
  return fs


def _epath(path: str):
  from etils import epath  # pylint: disable=import-outside-toplevel
  return epath.Path(path)


def _kind(path: str) -> str:
  s = scheme(path)
  if s in (None, "file"):
    return "local"
  return "epath" if s in _EPATH_SCHEMES else "fsspec"


def _dispatch(path: str, local, via_epath, via_fsspec):
  k = _kind(path)
  if k == "local":
    return local(_local(path))
  if k == "epath":
    return via_epath(_epath(path))
  return via_fsspec(_fsspec(path), path)


def exists(path: str) -> bool:
  return _dispatch(path, os.path.exists, lambda p: p.exists(), lambda f, p: f.exists(p))


def isdir(path: str) -> bool:
  return _dispatch(path, os.path.isdir, lambda p: p.is_dir(), lambda f, p: f.isdir(p))


def makedirs(path: str) -> None:
  _dispatch(path, lambda p: os.makedirs(p, exist_ok=True),
            lambda p: p.mkdir(parents=True, exist_ok=True),
            lambda f, p: f.makedirs(p, exist_ok=True))


def listdir(path: str) -> list[str]:
  """Names (not paths) in a directory, sorted; [] when it does not exist."""
  if not exists(path):
    return []
  k = _kind(path)
  if k == "local":
    return sorted(os.listdir(_local(path)))
  if k == "epath":
    return sorted(p.name for p in _epath(path).iterdir())
  fs = _fsspec(path)
  return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def open(path: str, mode: str = "r", encoding: str | None = None):  # pylint: disable=redefined-builtin
  k = _kind(path)
  if k == "local":
    return io.open(_local(path), mode, encoding=encoding if "b" not in mode else None)
  if k == "epath":
    f = _epath(path).open(mode)
    return f
  return _fsspec(path).open(path, mode, encoding=encoding if "b" not in mode else None)


def read_bytes(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def read_text(path: str) -> str:
  return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
  """Writes a whole file; atomic on local disks (no half-written file on a crash)."""
  parent = dirname(path)
  if parent:
    makedirs(parent)
  if _kind(path) == "local":
    tmp = _local(path) + ".tmp"
    with io.open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, _local(path))
  else:
    with open(path, "wb") as f:
      f.write(data)


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def read_json(path: str) -> Any:
  return json.loads(read_text(path))


def write_json(path: str, obj: Any, indent: int | None = 1) -> None:
  write_text(path, json.dumps(obj, indent=indent) + "\n")


def append_bytes(path: str, data: bytes) -> None:
  """Appends to a file (object stores: rewrites the object with the new tail)."""
  parent = dirname(path)
  if parent:
    makedirs(parent)
  if _kind(path) == "local":
    with io.open(_local(path), "ab") as f:
      f.write(data)
    return
  old = read_bytes(path) if exists(path) else b""
  with open(path, "wb") as f:
    f.write(old + data)


def append_text(path: str, text: str) -> None:
  append_bytes(path, text.encode("utf-8"))


def rmtree(path: str) -> None:
  if not exists(path):
    return
  k = _kind(path)
  if k == "local":
    shutil.rmtree(_local(path)) if os.path.isdir(_local(path)) else os.remove(_local(path))
  elif k == "epath":
    p = _epath(path)
    p.rmtree() if p.is_dir() else p.unlink()
  else:
    _fsspec(path).rm(path, recursive=True)


def copy_tree(src: str, dst: str) -> None:
  """Copies a (local or remote) directory tree file by file."""
  makedirs(dst)
  for name in listdir(src):
    s, d = join(src, name), join(dst, name)
    if isdir(s):
      copy_tree(s, d)
    else:
      write_bytes(d, read_bytes(s))


def save_figure(fig, path: str, dpi: int = 120) -> None:
  """matplotlib figure -> PNG at any path (local or URL)."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi)
  write_bytes(path, buf.getvalue())
