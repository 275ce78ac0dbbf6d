"""PyTorch .bin weights without torch: the restricted unpickler refuses anything but a state dict.

The reader's output is compared with safetensors on real torch.save files in test_conversion_hf.py
(torch exists only in .venv-hf).
"""

import pickle
import zipfile

import pytest

from conversion.spec import ConversionError
from conversion.torch_bin import TorchBinReader


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
