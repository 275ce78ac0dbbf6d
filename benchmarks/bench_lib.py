"""What the attention benchmark scripts share: random inputs, median timing, the `--sections` option,
atomic JSON records.

Imported by `ring_attention_cpu.py` and `ring_attention_gpu.py` (run as scripts, so this directory
is on `sys.path`). JAX is imported inside the functions: the scripts set `XLA_FLAGS` and
`JAX_PLATFORMS` before JAX starts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Iterable


def attention_inputs(batch: int, length: int, heads: int, kv_heads: int, head_dim: int, dtype="float32", seed: int = 0):
  """(q [B, S, H, D], k [B, S, K, D], v [B, S, K, D], do [B, S, H, D]) standard normal in `dtype`."""
  import jax  # pylint: disable=import-outside-toplevel

  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  q = jax.random.normal(keys[0], (batch, length, heads, head_dim), dtype)
  k = jax.random.normal(keys[1], (batch, length, kv_heads, head_dim), dtype)
  v = jax.random.normal(keys[2], (batch, length, kv_heads, head_dim), dtype)
  do = jax.random.normal(keys[3], (batch, length, heads, head_dim), dtype)
  return q, k, v, do


def median_seconds(fn: Callable, args: tuple, *, warmup: int, runs: int) -> float:
  """Median wall time of `fn(*args)` over `runs` calls, each waited for with `block_until_ready`.

  The first call compiles; it and `warmup` more calls are not timed.
  """
  import jax  # pylint: disable=import-outside-toplevel

  if runs < 1 or warmup < 0:
    raise ValueError(f"need runs >= 1 and warmup >= 0, got {runs=}, {warmup=}")
  for _ in range(1 + warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def parse_sections(parser: argparse.ArgumentParser, text: str, available: Iterable[str]) -> list[str]:
  """The comma-separated `--sections` value, in order; an unknown name is a usage error."""
  names = [name for name in text.split(",") if name]
  known = list(available)
  for name in names:
    if name not in known:
      parser.error(f"unknown section {name!r}; expected some of {known}")
  return names


def write_json(path: str | os.PathLike, data) -> Path:
  """Writes `data` as indented JSON atomically (temporary file in the same directory, then rename)."""
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  tmp.write_text(json.dumps(data, indent=1) + "\n")
  os.replace(tmp, path)
  return path
