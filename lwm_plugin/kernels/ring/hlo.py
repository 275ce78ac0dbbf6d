"""Reading compiled HLO text: where the collectives of a ring program sit (inside loops or not).

A JAX ring built on `lax.scan` can pick up extra collective-permutes or copies in the loop body
(Transformer Engine switched its ring off `scan` for that reason, TE PR #2503). These helpers let
tests and benchmarks check the compiled program instead of trusting the source:

    text = jax.jit(f).lower(*args).compile().as_text()
    ring_loops(text)   # e.g. [{'collective-permute': 2, 'copy': 0}] for the forward ring

Works on the text form of any backend (`collective-permute` and the async `-start` form).
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{\s*$")
_BODY = re.compile(r"\bbody=%?([\w.\-]+)")


def computations(hlo_text: str) -> dict[str, list[str]]:
  """Computation name -> its instruction lines."""
  found: dict[str, list[str]] = {}
  current = None
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header:
      current = header.group(1)
      found[current] = []
    elif line.startswith("}"):
      current = None
    elif current is not None:
      found[current].append(line)
  return found


def _count(lines: list[str], op: str) -> int:
  pattern = re.compile(rf"\s{re.escape(op)}(?:-start)?\(")
  return sum(1 for line in lines if pattern.search(line))


def ring_loops(hlo_text: str, ops: tuple[str, ...] = ("collective-permute", "copy")) -> list[dict[str, int]]:
  """For every while loop whose body holds a collective-permute directly: {op: count in that body}.

  A copy of a loop-carried K/V buffer in the body is the "extra copy per hop" to look for.
  """
  comps = computations(hlo_text)
  loops = []
  for lines in comps.values():
    for line in lines:
      body = _BODY.search(line)
      if " while(" in line and body and body.group(1) in comps:
        counts = {op: _count(comps[body.group(1)], op) for op in ops}
        if _count(comps[body.group(1)], "collective-permute"):
          loops.append(counts)
  return loops


def total_op_count(hlo_text: str, op: str = "collective-permute") -> int:
  """How many times `op` appears in the whole program."""
  return sum(_count(lines, op) for lines in computations(hlo_text).values())
