"""`pytorch_model.bin` files for tests, written without torch: valid ones and crafted malformed ones.

`torch.save` (zip format) pickles each tensor as `torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, requires_grad, backward_hooks)`, with the storage as the persistent id
`("storage", torch.<Type>Storage, key, "cpu", numel)` and its bytes in `archive/data/<key>`.
`write_bin` pickles exactly that vocabulary through stand-in `torch` modules (pickle records a
function by module and name), so a test can state any shape, stride, offset, storage type, element
count and byte content, including ones torch itself would never write.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import sys
import types
import zipfile
from collections import OrderedDict

import numpy as np


@dataclasses.dataclass
class TensorRecord:
  """One pickled tensor: a view (offset, shape, stride; in elements) into storage `key`.

  `storage_type` overrides the storage's type name in this tensor's reference to it.
  """
  key: str
  offset: int
  shape: tuple
  stride: tuple
  storage_type: str | None = None


@dataclasses.dataclass
class StorageRecord:
  """One storage: its pickled type name (e.g. 'FloatStorage'), declared element count and raw bytes
  (None: referenced by the pickle, but no bytes in the zip)."""
  type_name: str
  numel: int
  data: bytes | None


def _fake_torch() -> tuple[types.ModuleType, types.ModuleType]:
  torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

  def _rebuild_tensor_v2(*args):
    raise AssertionError("only pickled, never called")

  _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  for name in ("FloatStorage", "HalfStorage", "BFloat16Storage", "DoubleStorage", "LongStorage", "IntStorage",
               "BoolStorage"):
    setattr(torch, name, type(name, (), {"__module__": "torch", "__qualname__": name}))
  torch._utils = utils
  return torch, utils


class _Pickler(pickle.Pickler):
  def __init__(self, file, torch, storages):
    super().__init__(file, protocol=2)
    self._torch, self._storages = torch, storages

  def persistent_id(self, obj):
    if isinstance(obj, _StorageRef):
      s = self._storages[obj.key]
      return ("storage", getattr(self._torch, obj.type_name or s.type_name), obj.key, "cpu", s.numel)
    return None


@dataclasses.dataclass(frozen=True)
class _StorageRef:
  key: str
  type_name: str | None


def write_bin(path, tensors: dict[str, TensorRecord], storages: dict[str, StorageRecord]) -> None:
  """A torch.save-format zip at `path` holding `tensors` (a state dict) over `storages`."""
  torch, utils = _fake_torch()
  saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
  sys.modules.update({"torch": torch, "torch._utils": utils})
  try:
    class _Tensor:
      def __init__(self, t):
        self.t = t

      def __reduce__(self):
        t = self.t
        ref = _StorageRef(t.key, t.storage_type)
        return utils._rebuild_tensor_v2, (ref, t.offset, tuple(t.shape), tuple(t.stride), False, OrderedDict())

    buf = io.BytesIO()
    _Pickler(buf, torch, storages).dump(OrderedDict((k, _Tensor(t)) for k, t in tensors.items()))
  finally:
    for name, module in saved.items():
      if module is None:
        sys.modules.pop(name, None)
      else:
        sys.modules[name] = module
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", buf.getvalue())
    z.writestr("archive/byteorder", "little")
    for key, s in storages.items():
      if s.data is not None:
        z.writestr(f"archive/data/{key}", s.data)


def write_arrays(path, arrays: dict[str, np.ndarray]) -> None:
  """A plain state dict of contiguous float32 arrays, one storage each (what torch.save writes)."""
  tensors, storages = {}, {}
  for i, (name, x) in enumerate(arrays.items()):
    x = np.ascontiguousarray(x, np.float32)
    strides = tuple(s // 4 for s in x.strides)
    tensors[name] = TensorRecord(str(i), 0, x.shape, strides)
    storages[str(i)] = StorageRecord("FloatStorage", x.size, x.tobytes())
  write_bin(path, tensors, storages)
