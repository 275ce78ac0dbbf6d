"""The promise of `hooks.grow_rows` for a converter's output, checked from the text rows alone."""

import numpy as np


def assert_drawn_from(new_NxE: np.ndarray, text_TxE: np.ndarray) -> None:
  """New vocabulary rows (thousands of them): each its own, around the text rows' mean at their
  per-dimension spread (8448 draws: the mean within 0.05 sd, the spread within 4 %)."""
  new, text = new_NxE.astype(np.float64), text_TxE.astype(np.float64)
  assert len(np.unique(new, axis=0)) == len(new)
  np.testing.assert_allclose(new.mean(0), text.mean(0), atol=0.05 * text.std(0).max())
  np.testing.assert_allclose(new.std(0), text.std(0), rtol=0.04)
