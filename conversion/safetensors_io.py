"""Sharded safetensors: a streaming writer (one tensor in memory at a time) and a lazy reader.

`safetensors.numpy.save_file` needs every tensor of a shard in memory at once. A converter knows
every output name, shape and dtype before it reads any weight, so the writer lays out all shards
up front (header first, as the format requires: 8-byte little-endian header length, JSON header
padded with spaces to 8 bytes, then the raw little-endian data in header order) and streams each
tensor's bytes as it is produced. Files and index follow `save_pretrained`: `model.safetensors`
for one shard, else `model-0000k-of-0000N.safetensors` plus `model.safetensors.index.json`
(`{"metadata": {"total_parameters", "total_size"}, "weight_map"}`), metadata `{"format": "pt"}`.

The reader opens a directory written by anyone (index or single file) with `safe_open(..., "np")`
and reads one tensor per call; bfloat16 arrives as `ml_dtypes.bfloat16`. `safe_open` checks a
file's header against its size (a truncated shard fails there); its errors, and an unreadable
index, become ConversionErrors naming the file. Shard names in an index must be plain file names
in the model directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import struct
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open

from conversion.spec import ConversionError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
DEFAULT_SHARD_BYTES = 5 * 1024**3   # save_pretrained's default max_shard_size ("5GB")

_DTYPES = {
    np.dtype(np.float32): "F32",
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype(np.float16): "F16",
    np.dtype(np.float64): "F64",
}


def dtype_from_name(name: str) -> np.dtype:
  """'bfloat16' | 'float32' | 'float16' -> numpy dtype (bfloat16 via ml_dtypes)."""
  table = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32, "float16": np.float16}
  if name not in table:
    raise ConversionError(f"unsupported dtype {name!r}; choose one of {sorted(table)}")
  return np.dtype(table[name])


@dataclasses.dataclass(frozen=True)
class Entry:
  name: str
  shape: tuple[int, ...]
  dtype: np.dtype

  @property
  def nbytes(self) -> int:
    return math.prod(self.shape) * self.dtype.itemsize


def plan_shards(entries: list[Entry], max_shard_bytes: int) -> list[list[Entry]]:
  """Consecutive groups of at most `max_shard_bytes` (a larger tensor gets a shard of its own)."""
  shards: list[list[Entry]] = [[]]
  size = 0
  for entry in entries:
    if shards[-1] and size + entry.nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(entry)
    size += entry.nbytes
  return [s for s in shards if s]


def _header(entries: list[Entry]) -> bytes:
  header: dict[str, object] = {"__metadata__": {"format": "pt"}}
  offset = 0
  for e in entries:
    header[e.name] = {"dtype": _DTYPES[e.dtype], "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
    offset += e.nbytes
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)
  return struct.pack("<Q", len(raw)) + raw


class ShardedWriter:
  """Writes `entries` in the given order into shards under `out_dir` (which must exist)."""

  def __init__(self, out_dir: Path, entries: list[Entry], max_shard_bytes: int = DEFAULT_SHARD_BYTES):
    for e in entries:
      if e.dtype not in _DTYPES:
        raise ConversionError(f"tensor {e.name!r}: dtype {e.dtype} cannot be written to safetensors")
    if len({e.name for e in entries}) != len(entries):
      raise ConversionError("duplicate tensor names in the output plan")
    self._dir = Path(out_dir)
    self._shards = plan_shards(entries, max_shard_bytes)
    n = len(self._shards)
    self._files = [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    self._order = [(k, e) for k, shard in enumerate(self._shards) for e in shard]
    self._next = 0
    self._shard = -1
    self._fh: BinaryIO | None = None

  def write(self, name: str, x: np.ndarray) -> None:
    """The next tensor of the plan; its name, shape and dtype must match the plan."""
    if self._next >= len(self._order):
      raise ConversionError(f"tensor {name!r} written after the last planned tensor")
    k, entry = self._order[self._next]
    if name != entry.name:
      raise ConversionError(f"tensor {name!r} written out of order (expected {entry.name!r})")
    if tuple(x.shape) != entry.shape or x.dtype != entry.dtype:
      raise ConversionError(f"tensor {name!r}: got {x.shape} {x.dtype}, planned {entry.shape} {entry.dtype}")
    if k != self._shard:
      self._open(k)
    assert self._fh is not None
    self._fh.write(memoryview(np.ascontiguousarray(x).reshape(-1).view(np.uint8)))
    self._next += 1

  def _open(self, k: int) -> None:
    self._close_file()
    self._shard = k
    self._fh = open(self._dir / self._files[k], "wb")  # pylint: disable=consider-using-with
    self._fh.write(_header(self._shards[k]))

  def _close_file(self) -> None:
    if self._fh is not None:
      self._fh.close()
      self._fh = None

  def close(self) -> None:
    """Closes the last shard and writes the index; every planned tensor must have been written."""
    self._close_file()
    if self._next != len(self._order):
      raise ConversionError(f"only {self._next} of {len(self._order)} planned tensors were written "
                            f"(next: {self._order[self._next][1].name!r})")
    if len(self._files) > 1:
      index = {
          "metadata": {"total_parameters": sum(math.prod(e.shape) for _, e in self._order),
                       "total_size": sum(e.nbytes for _, e in self._order)},
          "weight_map": {e.name: self._files[k] for k, e in self._order},
      }
      (self._dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")

  def abort(self) -> None:
    self._close_file()


def read_weight_map(index: Path) -> dict[str, str]:
  """`weight_map` of a Hugging Face weights index (safetensors or torch `.bin` shards): tensor name -> shard
  file name in the same directory (anything else is a ConversionError naming the index)."""
  try:
    weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ConversionError(f"{index}: not a weights index with a weight_map ({e!r})") from e
  if not isinstance(weight_map, dict) or not weight_map:
    raise ConversionError(f"{index}: weight_map is not a non-empty object")
  for name, file in weight_map.items():
    if not isinstance(file, str) or Path(file).name != file or file in ("", ".", ".."):
      raise ConversionError(f"{index}: weight_map puts {name!r} in {file!r}, not a file name in this directory")
  return weight_map


@contextlib.contextmanager
def _open(path: Path) -> Iterator[Any]:
  """`safe_open(path)`, with a damaged or truncated file reported by name."""
  try:
    handle = safe_open(str(path), framework="np")
  except (SafetensorError, OSError) as e:
    raise ConversionError(f"{path}: not a readable safetensors file ({e}); is it truncated?") from e
  with handle:
    yield handle


class ShardedReader:
  """Lazy tensors of a Hugging Face safetensors directory (index + shards, or one file)."""

  def __init__(self, hf_dir: Path):
    self._dir = Path(hf_dir)
    index = self._dir / INDEX_FILE
    if index.is_file():
      weight_map = read_weight_map(index)
    elif (self._dir / SINGLE_FILE).is_file():
      weight_map = None
    else:
      raise ConversionError(f"{hf_dir}: no {INDEX_FILE} or {SINGLE_FILE}")
    self._where: dict[str, str] = {}
    self._shapes: dict[str, tuple[int, ...]] = {}
    files = sorted(set(weight_map.values())) if weight_map else [SINGLE_FILE]
    for file in files:
      if not (self._dir / file).is_file():
        raise ConversionError(f"{hf_dir}: shard {file} named in {INDEX_FILE} is missing")
      with _open(self._dir / file) as handle:
        for name in handle.keys():
          self._where[name] = file
          self._shapes[name] = tuple(handle.get_slice(name).get_shape())
    if weight_map:
      for name, file in weight_map.items():
        if self._where.get(name) != file:
          raise ConversionError(f"{hf_dir}: {INDEX_FILE} puts {name!r} in {file}, which does not hold it")

  def shapes(self) -> dict[str, tuple[int, ...]]:
    return dict(self._shapes)

  def get(self, name: str) -> np.ndarray:
    # Opened per tensor: a kept-open file stays memory-mapped, and every page read would stay
    # in this process's resident set until the end.
    path = self._dir / self._where[name]
    try:
      with _open(path) as handle:
        return handle.get_tensor(name)
    except (SafetensorError, TypeError, ValueError) as e:   # e.g. a dtype numpy has no type for
      raise ConversionError(f"{path}: cannot read tensor {name!r} ({e})") from e
