"""The finiteness check: finds every NaN/Inf (also past the first chunk), names the tensor and the first index."""

import warnings

import ml_dtypes
import numpy as np
import pytest

from conversion import finite
from conversion.spec import ConversionError


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.float64])
def test_finite_tensors_pass_and_bad_ones_are_named(dtype, monkeypatch):
  monkeypatch.setattr(finite, "_CHUNK", 7)   # several chunks, the bad values not in the first
  x = np.linspace(-3, 3, 60, dtype=np.float32).astype(dtype).reshape(3, 4, 5)
  finite.check_finite(x, "w", "ckpt")
  finite.check_finite(np.zeros((0, 3), dtype), "empty", "ckpt")
  x[1, 2, 3] = np.nan
  x[2, 0, 0] = -np.inf
  x[2, 3, 4] = np.inf
  with pytest.raises(ConversionError, match=r"^ckpt: tensor w has 1 NaN and 2 infinite value\(s\) "
                                            r"\(first at index \(1, 2, 3\)\)"):
    finite.check_finite(x, "w", "ckpt")


def test_overflow_of_a_cast_is_named_as_such():
  with warnings.catch_warnings():
    warnings.simplefilter("error")   # the converters' cast leaves the overflow to the check, silently
    y = finite.cast(np.array([1.0, 1e5], np.float32), np.float16)   # 1e5 > float16's 65504
  assert y.dtype == np.float16 and np.isinf(y[1])
  with pytest.raises(ConversionError, match=r"tensor lm_head.weight has 0 NaN and 1 infinite value\(s\) after "
                                            r"the cast to float16 \(first at index \(1,\)\)"):
    finite.check_finite(y, "lm_head.weight", "output out", after="the cast to float16")
