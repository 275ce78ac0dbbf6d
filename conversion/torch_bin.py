"""PyTorch `pytorch_model*.bin` weights read without torch (LWM-Text-* on the Hub ship only these).

`torch.save` (zip format, torch >= 1.6) writes `<root>/data.pkl`, a pickle of the state dict whose
tensors are `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` and whose
storages are persistent ids `("storage", torch.<Type>Storage, key, location, numel)` pointing at
the raw little-endian bytes in `<root>/data/<key>`. A restricted unpickler resolves only those
names (anything else in the pickle is refused, so loading cannot run code) and returns lazy
tensor records; `get` reads one storage from the zip and views it with the recorded strides.
The legacy (pre-1.6, non-zip) format is refused with a message.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import ml_dtypes
import numpy as np

from conversion.spec import ConversionError

INDEX_FILE = "pytorch_model.bin.index.json"
SINGLE_FILE = "pytorch_model.bin"
_STORAGES = {
    "FloatStorage": np.float32, "HalfStorage": np.float16, "BFloat16Storage": ml_dtypes.bfloat16,
    "DoubleStorage": np.float64, "LongStorage": np.int64, "IntStorage": np.int32, "BoolStorage": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class _Storage:
  key: str
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _Tensor:
  storage: _Storage
  offset: int
  shape: tuple[int, ...]
  stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, offset, size, stride, *_):
  return _Tensor(storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


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
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and pid[1] in _STORAGES):
      raise pickle.UnpicklingError(f"unsupported storage {pid!r}")
    return _Storage(str(pid[2]), np.dtype(_STORAGES[pid[1]]))


class _BinFile:
  """One `torch.save` zip file: its tensors as lazy records."""

  def __init__(self, path: Path):
    self.path = path
    if not zipfile.is_zipfile(path):
      raise ConversionError(f"{path}: not a zip-format torch checkpoint (legacy torch < 1.6 files are not supported)")
    with zipfile.ZipFile(path) as z:
      pkl = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
      if len(pkl) != 1:
        raise ConversionError(f"{path}: no data.pkl in this torch checkpoint")
      self.root = pkl[0][:-len("data.pkl")]
      byteorder = self.root + "byteorder"
      if byteorder in z.namelist() and z.read(byteorder).strip() != b"little":
        raise ConversionError(f"{path}: big-endian torch checkpoints are not supported")
      try:
        state = _Unpickler(z.open(pkl[0])).load()
      except (pickle.UnpicklingError, AttributeError, TypeError, EOFError) as e:
        raise ConversionError(f"{path}: not a plain state dict of tensors ({e})") from e
    if not isinstance(state, dict) or not all(isinstance(v, _Tensor) for v in state.values()):
      raise ConversionError(f"{path}: not a plain state dict of tensors")
    self.tensors: dict[str, _Tensor] = dict(state)

  def get(self, name: str) -> np.ndarray:
    t = self.tensors[name]
    with zipfile.ZipFile(self.path) as z:
      data = z.read(f"{self.root}data/{t.storage.key}")
    flat = np.frombuffer(data, dtype=t.storage.dtype)
    itemsize = t.storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(flat[t.offset:], shape=t.shape, strides=[s * itemsize for s in t.stride])
    return np.array(view)   # a contiguous copy; the storage bytes are freed on return


class TorchBinReader:
  """Tensors of a Hugging Face directory with `pytorch_model.bin` (or an index and shards)."""

  def __init__(self, hf_dir: Path):
    hf_dir = Path(hf_dir)
    index = hf_dir / INDEX_FILE
    files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())) if index.is_file() \
        else [SINGLE_FILE]
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
