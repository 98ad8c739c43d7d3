"""Metric writers: JSON lines and TensorBoard event files, process 0 only.

`MetricWriter(logdir)` writes every record to `<logdir>/metrics.jsonl` (one JSON
object per write: step, wall time, scalars) and to a TensorBoard event file in
`<logdir>/tb/`. Events are written in TensorBoard's own format (TFRecord-framed
`Event` protos from tensorboardX, no TensorFlow needed), through mced_jax.runtime.fs, so a
`gs://` work dir gets them too. On local disks both files are appended at every
write (a crash loses nothing); on object stores they are rewritten at `flush()`.
"""

from __future__ import annotations

import json
import math
import socket
import struct
import time

import jax
import numpy as np

from mced_jax.runtime import fs


def _plain(v):
  if isinstance(v, (np.ndarray, jax.Array)):
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v.tolist()
  if isinstance(v, (np.floating, np.integer)):
    return v.item()
  return v


def _record(data: bytes) -> bytes:
  """TFRecord framing: length, masked CRC of the length, data, masked CRC of data."""
  from tensorboardX.record_writer import masked_crc32c  # pylint: disable=import-outside-toplevel
  header = struct.pack("<Q", len(data))
  return (header + struct.pack("<I", masked_crc32c(header)) + data +
          struct.pack("<I", masked_crc32c(data)))


class TensorBoardWriter:
  """Scalars as a TensorBoard event file (`events.out.tfevents.<time>.<host>`)."""

  def __init__(self, logdir: str):
    from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
    self._event_pb2 = event_pb2
    self.path = fs.join(logdir, f"events.out.tfevents.{int(time.time())}."
                        f"{socket.gethostname()}.{jax.process_index()}")
    self._local = fs.is_local(logdir)
    self._buffer = [_record(event_pb2.Event(
        wall_time=time.time(), file_version="brain.Event:2").SerializeToString())]
    self._written = 0
    self.flush()

  def scalars(self, step: int, scalars: dict) -> None:
    from tensorboardX.proto import summary_pb2  # pylint: disable=import-outside-toplevel
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
              for k, v in scalars.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not values:
      return
    ev = self._event_pb2.Event(wall_time=time.time(), step=int(step),
                               summary=summary_pb2.Summary(value=values))
    self._buffer.append(_record(ev.SerializeToString()))
    if self._local:
      self.flush()

  def flush(self) -> None:
    if self._local:
      new = b"".join(self._buffer[self._written:])
      if new:
        fs.append_bytes(self.path, new)
      self._written = len(self._buffer)
    else:
      fs.write_bytes(self.path, b"".join(self._buffer))


class MetricWriter:
  """JSONL + TensorBoard, written by process 0 only."""

  def __init__(self, logdir: str, name: str = "metrics", tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self.logdir = fs.abspath(logdir)
    self.path = fs.join(self.logdir, f"{name}.jsonl")
    self._local = fs.is_local(self.logdir)
    self._pending: list[str] = []
    self._tb = None
    if self.active:
      fs.makedirs(self.logdir)
      if tensorboard:
        self._tb = TensorBoardWriter(fs.join(self.logdir, "tb"))

  def write(self, step: int, scalars: dict) -> None:
    if not self.active:
      return
    rec = {"step": int(step), "time": time.time()}
    rec.update({k: _plain(v) for k, v in scalars.items()})
    line = json.dumps(rec) + "\n"
    if self._local:
      fs.append_text(self.path, line)
    else:
      self._pending.append(line)
    if self._tb is not None:
      self._tb.scalars(step, {k: v for k, v in rec.items() if k not in ("step", "time")})

  def flush(self) -> None:
    if not self.active:
      return
    if self._pending:
      fs.append_text(self.path, "".join(self._pending))
      self._pending = []
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    self.flush()


def read_jsonl(path: str) -> list[dict]:
  return [json.loads(line) for line in fs.read_text(path).splitlines() if line.strip()]
