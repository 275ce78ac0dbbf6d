"""Released LWM / EasyLM Jax checkpoints: the streaming msgpack `params` file, read lazily.

Format (EasyLM `StreamingCheckpointer.save_checkpoint`, also LWM's `tux`): a flat sequence of
msgpack records `(key_tuple, flax.serialization.to_bytes(array))`, one per tensor, in
`flatten_dict` order. The value is itself msgpack: a flax ndarray extension, or, for arrays over
1 GiB (e.g. a 7B model's scanned MLP kernels), flax's chunked-array map. There is no index, so
`LwmFile` scans the file once reading only record headers (a few hundred bytes each, then a seek
past the data) and decodes a tensor only when asked. `flax.serialization.msgpack_restore`
decodes values, chunked ones included. The file is untrusted: any decoding error is a
ConversionError naming the file and the record or tensor, and a decoded tensor must be a float
array of the shape its header announced.

Keys start with `params` (the released files hold `train_state.params`); the prefix is dropped.
A `streaming_train_state` file (saved with `save_optimizer_state`) holds the whole flax TrainState:
`step`, `opt_state/...` and the parameters under `params/params/...`. Its parameters are read the
way LWM's own `trainstate_params::` loader reads them: the records under `params/params` with that
prefix dropped; the step and optimizer records are indexed (headers only) and left unread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from pathlib import Path
from typing import Iterator

import ml_dtypes
import msgpack
import numpy as np
from flax import serialization

from conversion.spec import ConversionError

log = logging.getLogger(__name__)
Key = tuple[str, ...]
_TRAIN_STATE_PARAMS = ("params", "params")
_HEAD_BYTES = 64 * 1024
# msgpack headers of a byte string: marker -> (size of the length field); bin 8/16/32, str 8/16/32.
_LENGTH_BYTES = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}
_LENGTH_FORMAT = {1: ">B", 2: ">H", 4: ">I"}
_EXT_LENGTH_BYTES = {0xC7: 1, 0xC8: 2, 0xC9: 4}   # ext 8/16/32 (flax's ndarray extension)
_FLAX_NDARRAY = 1
_FLOATS = {np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64), np.dtype(ml_dtypes.bfloat16)}


def _value_span(head: bytes, pos: int, where: str) -> tuple[int, int]:
  """(offset of the data relative to `head`, data length) of the byte string starting at `pos`."""
  marker = head[pos]
  if 0xA0 <= marker <= 0xBF:   # fixstr
    return pos + 1, marker & 0x1F
  size = _LENGTH_BYTES.get(marker)
  if size is None:
    raise ConversionError(f"{where}: a record's value is not a byte string (msgpack marker {marker:#x}); "
                          "not an EasyLM/LWM streaming checkpoint")
  (length,) = struct.unpack(_LENGTH_FORMAT[size], head[pos + 1:pos + 1 + size])
  return pos + 1 + size, length


def _ndarray_shape(head: bytes, pos: int, where: str) -> tuple[int, ...]:
  """Shape of the flax ndarray extension at `pos`: ext header, then msgpack (shape, dtype, data)."""
  size = _EXT_LENGTH_BYTES.get(head[pos])
  if size is None or head[pos + 1 + size] != _FLAX_NDARRAY:
    raise ConversionError(f"{where}: value is not a flax-serialized array")
  unpacker = msgpack.Unpacker(raw=False)
  unpacker.feed(head[pos + 2 + size:])
  if unpacker.read_array_header() != 3:
    raise ConversionError(f"{where}: value is not a flax-serialized array")
  return tuple(int(d) for d in unpacker.unpack())


def _encoded_shape(head: bytes, where: str) -> tuple[int, ...]:
  """Shape of an encoded value (a flax array, or flax's chunked-array map) from its first bytes."""
  if head[0] in _EXT_LENGTH_BYTES:
    return _ndarray_shape(head, 0, where)
  unpacker = msgpack.Unpacker(raw=False)
  unpacker.feed(head)
  try:
    for _ in range(unpacker.read_map_header()):
      if unpacker.unpack() == "shape":
        dims = unpacker.unpack()
        return tuple(int(dims[str(i)]) for i in range(len(dims)))
      unpacker.skip()
  except (ValueError, msgpack.OutOfData, TypeError, KeyError) as e:
    raise ConversionError(f"{where}: value is not a flax-serialized array ({e})") from e
  raise ConversionError(f"{where}: value is not a flax-serialized array")


@contextlib.contextmanager
def _decoding(what: str) -> Iterator[None]:
  """Any error from decoding untrusted msgpack/flax bytes becomes a ConversionError saying `what`."""
  try:
    yield
  except (ValueError, TypeError, KeyError, IndexError, AssertionError, SyntaxError, struct.error,
          msgpack.UnpackException) as e:   # SyntaxError: numpy parsing a damaged dtype name
    raise ConversionError(f"{what} ({type(e).__name__}: {e})") from e


def _params_of(index: dict[Key, tuple[int, int]], where: str) -> tuple[dict[Key, tuple[int, int]], bool]:
  """(the parameter records with their prefix dropped, whether the file is a train state)."""
  if any(key[:2] == _TRAIN_STATE_PARAMS for key in index):
    return {key[2:]: span for key, span in index.items() if key[:2] == _TRAIN_STATE_PARAMS}, True
  params: dict[Key, tuple[int, int]] = {}
  for key, span in index.items():
    short = key[1:] if key and key[0] == "params" else key
    if short in params:
      raise ConversionError(f"{where}: tensor {'/'.join(short)} appears twice (with and without the params prefix)")
    params[short] = span
  return params, False


class LwmFile:
  """Index of a streaming params file: key -> (offset, length) of each encoded tensor."""

  def __init__(self, path: str | os.PathLike):
    self.path = Path(path)
    if not self.path.is_file():
      raise ConversionError(f"{path}: no such LWM params file")
    self._index: dict[Key, tuple[int, int]] = {}
    size = self.path.stat().st_size
    with open(self.path, "rb") as f:
      offset = 0
      while offset < size:
        f.seek(offset)
        head = f.read(_HEAD_BYTES)
        where = f"{self.path} (record at byte {offset})"
        with _decoding(f"{where}: not an EasyLM/LWM streaming checkpoint"):
          unpacker = msgpack.Unpacker(raw=False)
          unpacker.feed(head)
          if unpacker.read_array_header() != 2:
            raise ValueError("record is not a (key, value) pair")
          key = tuple(str(k) for k in unpacker.unpack())
          start, length = _value_span(head, unpacker.tell(), where)
        if offset + start + length > size:
          raise ConversionError(f"{where}: file is truncated (tensor {'/'.join(key)} runs past the end)")
        if key in self._index:
          raise ConversionError(f"{where}: tensor {'/'.join(key)} appears twice")
        self._index[key] = (offset + start, length)
        offset += start + length
    if not self._index:
      raise ConversionError(f"{path}: empty LWM params file")
    records = len(self._index)
    self._index, self.train_state = _params_of(self._index, str(self.path))
    if self.train_state:
      log.info("%s is a train state: reading its %d parameter tensors, skipping %d step/optimizer records",
               self.path, len(self._index), records - len(self._index))

  def keys(self) -> list[Key]:
    return list(self._index)

  def shape(self, key: Key) -> tuple[int, ...]:
    """The tensor's shape, from the first bytes of its record (no tensor data is read)."""
    offset, length = self._index[key]
    with open(self.path, "rb") as f:
      f.seek(offset)
      head = f.read(min(length, _HEAD_BYTES))
    where = f"{self.path}: tensor {'/'.join(key)}"
    with _decoding(f"{where}: damaged record"):
      return _encoded_shape(head, where)

  def read(self, key: Key) -> np.ndarray:
    """The tensor, checked to be a float array of the shape its record's header gives."""
    offset, length = self._index[key]
    with open(self.path, "rb") as f:
      f.seek(offset)
      data = f.read(length)
    where = f"{self.path}: tensor {'/'.join(key)}"
    with _decoding(f"{where}: damaged record"):
      value = serialization.msgpack_restore(data)
    if not isinstance(value, np.ndarray):
      raise ConversionError(f"{where} is not an array ({type(value).__name__})")
    if value.dtype not in _FLOATS:
      raise ConversionError(f"{where} has dtype {value.dtype}, expected one of {sorted(str(d) for d in _FLOATS)}")
    if value.shape != self.shape(key):
      raise ConversionError(f"{where}: its data has shape {value.shape}, its header {self.shape(key)}")
    return value
