"""PyTorch .bin weights without torch: the restricted unpickler refuses anything but a state dict,
and every tensor record is checked against its storage before a byte of it is viewed.

The reader's output is compared with safetensors on real torch.save files in test_conversion_hf.py
(torch exists only in .venv-hf).
"""

import pickle
import zipfile

import numpy as np
import pytest

from conversion.spec import ConversionError
from conversion.torch_bin import TorchBinReader
from damage import named_errors
from torch_checkpoints import StorageRecord, TensorRecord, write_arrays, write_bin


def test_torch_bin_reader_refuses_code_and_legacy_files(tmp_path):
  class Evil:
    def __reduce__(self):
      import os
      return (os.system, ("echo pwned",))

  with zipfile.ZipFile(tmp_path / "pytorch_model.bin", "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
  with pytest.raises(ConversionError, match=r"refusing to load (posix|os)\.system"):
    TorchBinReader(tmp_path)
  (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02legacy")
  with pytest.raises(ConversionError, match="legacy torch < 1.6"):
    TorchBinReader(tmp_path)


def _floats(n):
  return StorageRecord("FloatStorage", n, np.arange(n, dtype=np.float32).tobytes())


def test_valid_views_read_like_numpy(tmp_path):
  # A transposed view with an offset, and a second tensor sharing the storage (tied weights).
  storage = np.arange(20, dtype=np.float32)
  write_bin(tmp_path / "pytorch_model.bin",
            {"t": TensorRecord("0", 2, (3, 4), (1, 3)), "flat": TensorRecord("0", 0, (20,), (1,)),
             "empty": TensorRecord("0", 0, (0, 5), (5, 1))},
            {"0": _floats(20)})
  reader = TorchBinReader(tmp_path)
  assert reader.shapes() == {"t": (3, 4), "flat": (20,), "empty": (0, 5)}
  want = np.array([[storage[2 + i + 3 * j] for j in range(4)] for i in range(3)])   # element [i, j] at 2 + i + 3j
  np.testing.assert_array_equal(reader.get("t"), want)
  np.testing.assert_array_equal(reader.get("flat"), storage)
  assert reader.get("empty").shape == (0, 5)


@pytest.mark.parametrize("tensor, storage, message", [
    # storage shorter than the shape
    (TensorRecord("0", 0, (4, 4), (4, 1)), _floats(8), r"reach element 15 of a storage with 8 elements"),
    # a huge stride (segfaulted before the check)
    (TensorRecord("0", 0, (2, 4), (1 << 28, 1)), _floats(8), r"reach element 268435459 of a storage"),
    (TensorRecord("0", -4, (2,), (1,)), _floats(8), r"negative offset"),
    (TensorRecord("0", 1 << 63, (2,), (1,)), _floats(8), r"offset 9223372036854775808 reach element"),
    (TensorRecord("0", 0, (2, -1), (1, 1)), _floats(8), r"negative offset, shape or stride"),
    (TensorRecord("0", 0, (2, 2), (-1, 1)), _floats(8), r"negative offset, shape or stride"),
    (TensorRecord("0", 0, (2, 2), (2,)), _floats(8), r"differ in length"),
    # a broadcast view: every index inside the storage, but 2**40 elements to materialise
    (TensorRecord("0", 0, (1 << 40,), (0,)), _floats(8), r"more than its storage's 8"),
    # the storage type does not match its bytes (float32 bytes declared as half, or as 16 floats)
    (TensorRecord("0", 0, (8,), (1,)), StorageRecord("HalfStorage", 8, np.zeros(8, np.float32).tobytes()),
     r"holds 32 bytes, but is declared as 8 float16 elements \(16 bytes\)"),
    (TensorRecord("0", 0, (8,), (1,)), StorageRecord("FloatStorage", 16, np.zeros(8, np.float32).tobytes()),
     r"holds 32 bytes, but is declared as 16 float32"),
    (TensorRecord("0", 0, ("8",), (1,)), _floats(8), r"non-integer shape"),
    (TensorRecord("0", 0, (8,), (1,)), StorageRecord("FloatStorage", 8, None), r"storage data/0 is not in the file"),
])
def test_malformed_tensor_records_are_refused_before_reading(tmp_path, tensor, storage, message):
  write_bin(tmp_path / "pytorch_model.bin", {"model.w": tensor}, {"0": storage})
  with pytest.raises(ConversionError, match=message) as info:
    TorchBinReader(tmp_path)
  if "non-integer" not in message:   # the unpickler's own refusal names the file only
    assert f"{tmp_path / 'pytorch_model.bin'}: tensor 'model.w':" in str(info.value)


def test_one_storage_read_as_two_dtypes_is_refused(tmp_path):
  # The pickle states a storage's type at each reference; two types for one storage cannot both be right.
  write_bin(tmp_path / "pytorch_model.bin",
            {"a": TensorRecord("0", 0, (8,), (1,)), "b": TensorRecord("0", 0, (16,), (1,), storage_type="HalfStorage")},
            {"0": _floats(8)})
  with pytest.raises(ConversionError, match=r"tensor 'b': storage 0 is read as float16 here and as float32"):
    TorchBinReader(tmp_path)


def test_damaged_files_fail_with_conversion_errors_only(tmp_path):
  # Whatever a damaged zip/pickle makes zipfile or pickle raise, the reader answers with a ConversionError
  # naming the file (or reads it, when the damage hit bytes nothing checks).
  write_arrays(tmp_path / "src.bin", {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, np.float32)})
  source = (tmp_path / "src.bin").read_bytes()
  assert named_errors(source, tmp_path / "pytorch_model.bin", TorchBinReader, ConversionError) > 300
