"""PyTorch `pytorch_model*.bin` weights read without torch (LWM-Text-* on the Hub ship only these).

`torch.save` (zip format, torch >= 1.6) writes `<root>/data.pkl`, a pickle of the state dict whose
tensors are `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` and whose
storages are persistent ids `("storage", torch.<Type>Storage, key, location, numel)` pointing at
the raw little-endian bytes in `<root>/data/<key>`. A restricted unpickler resolves only those
names (anything else in the pickle is refused, so loading cannot run code) and returns lazy
tensor records; `get` reads one storage from the zip and views it with the recorded strides.
The legacy (pre-1.6, non-zip) format is refused with a message.

The pickle is untrusted: `as_strided` trusts its arguments, so a crafted shape, stride or offset
would read outside the storage (garbage in the checkpoint, or a segfault). Before any storage byte
is read, every tensor is checked against its storage's size in the zip (`_check_tensor`): integer
shape/stride/offset, none negative, the largest element index reachable inside the storage, no
more elements than the storage holds (a broadcast view could make a tiny storage materialise
terabytes), and the storage's byte size consistent with its declared type and element count.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

import ml_dtypes
import numpy as np

from conversion.safetensors_io import read_weight_map
from conversion.spec import ConversionError

INDEX_FILE = "pytorch_model.bin.index.json"
SINGLE_FILE = "pytorch_model.bin"
_STORAGES = {
    "FloatStorage": np.float32, "HalfStorage": np.float16, "BFloat16Storage": ml_dtypes.bfloat16,
    "DoubleStorage": np.float64, "LongStorage": np.int64, "IntStorage": np.int32, "BoolStorage": np.bool_,
}


# What `zipfile` raises on a damaged archive: bad CRC or headers, an unsupported compression method or
# version, encryption (RuntimeError), a short member (EOFError), a bad seek (OSError), zlib errors.
_ZIP_ERRORS = (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError, ValueError, zlib.error)


@dataclasses.dataclass(frozen=True)
class _Storage:
  key: str
  dtype: np.dtype
  numel: int   # the element count the pickle declares for the storage


@dataclasses.dataclass(frozen=True)
class _Tensor:
  storage: _Storage
  offset: int
  shape: tuple[int, ...]
  stride: tuple[int, ...]


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _rebuild_tensor_v2(storage, offset, size, stride, *_):
  if not isinstance(storage, _Storage) or not _is_int(offset):
    raise pickle.UnpicklingError("a tensor record without a storage and an integer offset")
  if not (isinstance(size, tuple) and isinstance(stride, tuple) and all(map(_is_int, size + stride))):
    raise pickle.UnpicklingError(f"a tensor with a non-integer shape {size!r} or stride {stride!r}")
  return _Tensor(storage, offset, size, stride)


class _Unpickler(pickle.Unpickler):
  """Resolves the state-dict vocabulary of torch.save and nothing else."""

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return OrderedDict
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return _rebuild_tensor_v2
    if module == "torch" and name in _STORAGES:
      return name
    raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not part of a plain state dict)")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and pid[1] in _STORAGES
            and isinstance(pid[2], str) and _is_int(pid[4])):
      raise pickle.UnpicklingError(f"unsupported storage {pid!r}")
    return _Storage(pid[2], np.dtype(_STORAGES[pid[1]]), pid[4])


def _check_tensor(t: _Tensor, storage_bytes: int | None, seen: dict[str, np.dtype]) -> str | None:
  """Why the tensor cannot be viewed safely in its storage of `storage_bytes` bytes, or None."""
  if storage_bytes is None:
    return f"its storage data/{t.storage.key} is not in the file"
  if seen.setdefault(t.storage.key, t.storage.dtype) != t.storage.dtype:
    return f"storage {t.storage.key} is read as {t.storage.dtype} here and as {seen[t.storage.key]} elsewhere"
  itemsize = t.storage.dtype.itemsize
  if storage_bytes != t.storage.numel * itemsize:
    return (f"storage {t.storage.key} holds {storage_bytes} bytes, but is declared as {t.storage.numel} "
            f"{t.storage.dtype} elements ({t.storage.numel * itemsize} bytes)")
  if len(t.shape) != len(t.stride):
    return f"shape {t.shape} and stride {t.stride} differ in length"
  if t.offset < 0 or any(d < 0 for d in t.shape) or any(s < 0 for s in t.stride):
    return f"negative offset, shape or stride (offset {t.offset}, shape {t.shape}, stride {t.stride})"
  numel = math.prod(t.shape)
  if numel == 0:
    return None
  last = t.offset + sum((d - 1) * s for d, s in zip(t.shape, t.stride))
  if last >= t.storage.numel:
    return (f"shape {t.shape}, stride {t.stride}, offset {t.offset} reach element {last} of a storage with "
            f"{t.storage.numel} elements")
  if numel > t.storage.numel:
    return f"shape {t.shape} has {numel} elements, more than its storage's {t.storage.numel}"
  return None


def _records(path: Path) -> tuple[str, dict[str, _Tensor]]:
  """(archive root, checked tensor records) of a torch.save zip file; no storage byte is read."""
  with zipfile.ZipFile(path) as z:
    pkl = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl) != 1:
      raise ConversionError(f"{path}: no data.pkl in this torch checkpoint")
    root = pkl[0][:-len("data.pkl")]
    byteorder = root + "byteorder"
    if byteorder in z.namelist() and z.read(byteorder).strip() != b"little":
      raise ConversionError(f"{path}: big-endian torch checkpoints are not supported")
    try:
      state = _Unpickler(z.open(pkl[0])).load()
    except (pickle.UnpicklingError, AttributeError, TypeError, ValueError, IndexError, KeyError, EOFError) as e:
      raise ConversionError(f"{path}: not a plain state dict of tensors ({e})") from e
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, _Tensor)
                                              for k, v in state.items()):
      raise ConversionError(f"{path}: not a plain state dict of tensors")
    sizes = {info.filename: info.file_size for info in z.infolist()}
  seen: dict[str, np.dtype] = {}
  for name, t in state.items():
    problem = _check_tensor(t, sizes.get(f"{root}data/{t.storage.key}"), seen)
    if problem:
      raise ConversionError(f"{path}: tensor {name!r}: {problem}; refusing a malformed checkpoint")
  return root, dict(state)


class _BinFile:
  """One `torch.save` zip file: its tensors as lazy records."""

  def __init__(self, path: Path):
    self.path = path
    if not zipfile.is_zipfile(path):
      raise ConversionError(f"{path}: not a zip-format torch checkpoint (legacy torch < 1.6 files are not supported)")
    try:
      self.root, self.tensors = _records(path)
    except ConversionError:
      raise
    except _ZIP_ERRORS as e:
      raise ConversionError(f"{path}: damaged zip file ({type(e).__name__}: {e})") from e

  def get(self, name: str) -> np.ndarray:
    """The tensor as a contiguous array (its record was checked against the storage size on open)."""
    t = self.tensors[name]
    try:
      with zipfile.ZipFile(self.path) as z:
        data = z.read(f"{self.root}data/{t.storage.key}")
    except _ZIP_ERRORS as e:
      raise ConversionError(f"{self.path}: tensor {name!r}: cannot read its storage ({type(e).__name__}: {e})") from e
    if len(data) != t.storage.numel * t.storage.dtype.itemsize:   # the zip's size field was checked, its data not
      raise ConversionError(f"{self.path}: tensor {name!r}: storage {t.storage.key} holds {len(data)} bytes, "
                            f"expected {t.storage.numel * t.storage.dtype.itemsize}")
    flat = np.frombuffer(data, dtype=t.storage.dtype)
    itemsize = t.storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(flat[t.offset:], shape=t.shape, strides=[s * itemsize for s in t.stride])
    return np.array(view)   # a contiguous copy; the storage bytes are freed on return


class TorchBinReader:
  """Tensors of a Hugging Face directory with `pytorch_model.bin` (or an index and shards)."""

  def __init__(self, hf_dir: Path):
    hf_dir = Path(hf_dir)
    index = hf_dir / INDEX_FILE
    files = sorted(set(read_weight_map(index).values())) if index.is_file() else [SINGLE_FILE]
    self._where: dict[str, _BinFile] = {}
    for file in files:
      if not (hf_dir / file).is_file():
        raise ConversionError(f"{hf_dir}: weights file {file} is missing")
      bin_file = _BinFile(hf_dir / file)
      for name in bin_file.tensors:
        self._where[name] = bin_file

  def shapes(self) -> dict[str, tuple[int, ...]]:
    return {name: f.tensors[name].shape for name, f in self._where.items()}

  def get(self, name: str) -> np.ndarray:
    return self._where[name].get(name)
