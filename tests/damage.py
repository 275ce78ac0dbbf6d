"""Randomly damaged copies of a file's bytes, for tests that readers of untrusted files fail cleanly."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Iterator


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


def named_errors(source: bytes, target: Path, open_reader: Callable[[Path], Any], error: type[Exception],
                 n: int = 400) -> int:
  """Writes `n` damaged copies of `source` to `target`, reads each whole (`open_reader(target.parent)`, then
  every tensor); every failure must be an `error` naming `target`. Returns how many copies failed."""
  errors = 0
  for data in damaged_copies(source, n):
    target.write_bytes(data)
    try:
      reader = open_reader(target.parent)
      for name in reader.shapes():
        reader.get(name)
    except error as e:
      assert str(target) in str(e)
      errors += 1
  return errors
