"""The converters' finiteness check: a NaN or Inf weight is refused with the tensor's name.

A checkpoint with NaN/Inf weights is corrupt (flipped bytes in a data file, a diverged run) or was
cast into a dtype too narrow for it (float32 above 65504 written as float16). Converting it would
hand the user a model that silently produces NaN. Every converter checks each tensor it reads and
each tensor it writes, so the message names the tensor at fault in the user's terms: a source
tensor for a corrupt input, an output tensor plus its dtype for an overflowing cast.

`cast` is the converters' narrowing cast: numpy's overflow warning is silenced there, because
`check_finite` on the result reports the overflow as an error that names the tensor.

The check walks the array in chunks, so its temporary memory is bounded (a 7B model's scanned MLP
kernel has 1.4e9 elements; one boolean mask over it would be 1.4 GB).
"""

from __future__ import annotations

import numpy as np

from conversion.spec import ConversionError

_CHUNK = 1 << 22   # elements per pass


def check_finite(x: np.ndarray, name: str, where: str, *, after: str = "") -> None:
  """Raises ConversionError naming `where` and tensor `name` if `x` holds a NaN or an infinity.

  `after` says what produced the values (e.g. "the cast to float16"), for output tensors.
  """
  flat = np.asarray(x).reshape(-1)
  for start in range(0, flat.size, _CHUNK):
    if not np.isfinite(flat[start:start + _CHUNK]).all():
      break
  else:
    return
  nan = sum(int(np.isnan(flat[i:i + _CHUNK]).sum()) for i in range(start, flat.size, _CHUNK))
  inf = sum(int(np.isinf(flat[i:i + _CHUNK]).sum()) for i in range(start, flat.size, _CHUNK))
  first = start + int(np.argmin(np.isfinite(flat[start:start + _CHUNK])))
  index = tuple(int(i) for i in np.unravel_index(first, np.shape(x)))
  cause = f" after {after}" if after else ""
  raise ConversionError(f"{where}: tensor {name} has {nan} NaN and {inf} infinite value(s){cause} (first at "
                        f"index {index}); refusing to convert it")


def cast(x: np.ndarray, dtype) -> np.ndarray:
  """`x.astype(dtype)` without numpy's overflow warning (follow it with `check_finite(..., after=...)`)."""
  with np.errstate(over="ignore"):
    return x.astype(dtype)
