"""Randomly damaged copies of a file's bytes, for tests that readers of untrusted files fail cleanly."""

from __future__ import annotations

import random
from typing import Iterator


def damaged_copies(data: bytes, n: int, seed: int = 0) -> Iterator[bytes]:
  """`n` copies of `data`, each with 1-4 random bytes overwritten and, one time in three, truncated."""
  rng = random.Random(seed)
  for _ in range(n):
    copy = bytearray(data)
    for _ in range(rng.randint(1, 4)):
      copy[rng.randrange(len(copy))] = rng.randrange(256)
    if rng.random() < 1 / 3:
      copy = copy[:rng.randrange(len(copy))]
    yield bytes(copy)
