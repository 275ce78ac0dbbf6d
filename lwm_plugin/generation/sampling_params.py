"""The sampling settings (`Sampling`), checked on construction; no JAX import.

Kept apart from `sampling` (the JAX code) so that `lwm-generate` validates its `--temperature`,
`--top-k`, `--top-p` and `--seed` before JAX is imported and its platform chosen.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How to pick a token (see `lwm_plugin.generation.sampling`). Hashable: a static argument of `sample`."""
  temperature: float = 0.0      # 0: greedy
  top_k: int | None = None      # None: no top-k
  top_p: float | None = None    # None (or 1.0): no nucleus cut
  seed: int = 0

  def __post_init__(self):
    if not (math.isfinite(self.temperature) and self.temperature >= 0.0):
      raise ValueError(f"temperature {self.temperature}: expected a finite number >= 0 (0 is greedy)")
    if self.top_k is not None and self.top_k < 1:
      raise ValueError(f"top_k {self.top_k}: expected an int >= 1")
    if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p {self.top_p}: expected a number in (0, 1]")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0
