"""The per-source example stream: decoded records -> example features ready to pack.

A small stateful Grain stage (`ExampleStreamIterDataset`) between decoding and packing. For each
decoded record it
  * counts and logs an `InvalidRecord` (skip mode), and stops with an error once a source has
    skipped more than `max_invalid_fraction` of what it read (after `MIN_RECORDS` records), so a
    wrong format cannot silently empty a source;
  * applies the overlong policy (`packing.fit_length`: truncate | split | error, naming file:line);
  * turns each resulting example into next-token features with raw weights
    (`packing.example_features`) and drops pieces without any loss token (they weigh nothing).

A split example yields several pieces; the iterator state records the parent state before that
example plus how many pieces were emitted, so a restore resumes mid-example exactly. The counts
(`read`, `examples`, `invalid` by kind, `truncated`, `split`, `no_loss`) are in the state, key `counts`:
they are saved in MaxText's checkpoint (`iter` item) and survive a resume.
"""

from __future__ import annotations

import logging
from typing import Any

import grain

from data_loaders.packing import example_features, fit_length, has_loss
from data_loaders.sources import InvalidRecord

logger = logging.getLogger(__name__)

MIN_RECORDS = 100  # the invalid-fraction limit applies from this many records read
_LOGGED_PER_KIND = 5  # truncations / splits logged per source (all are counted)


class TooManyInvalidError(RuntimeError):
  """A source skipped more than its allowed fraction of bad records."""


def _new_counts() -> dict[str, Any]:
  return {"read": 0, "examples": 0, "invalid": {}, "truncated": 0, "split": 0, "no_loss": 0}


def _copy_counts(counts: dict[str, Any]) -> dict[str, Any]:  # get_state runs once per element: no deepcopy
  return {**counts, "invalid": dict(counts["invalid"])}


class _ExampleStreamIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, spec: "ExampleStreamIterDataset"):
    super().__init__(parent)
    self._spec = spec
    self._counts = _new_counts()
    self._pending: list[dict] = []
    self._taken = 0
    self._element_state = None
    self._last_invalid = ""

  def __next__(self):
    while not self._pending:
      state = self._parent.get_state()
      element = next(self._parent)
      self._element_state, self._taken, self._pending = state, 0, self._process(element, count=True)
    self._taken += 1
    return self._pending.pop(0)

  def _process(self, element: tuple[Any, str], count: bool) -> list[dict]:
    spec, counts = self._spec, self._counts
    example, where = element
    if count:
      counts["read"] += 1
      if isinstance(example, InvalidRecord):
        counts["invalid"][example.kind] = counts["invalid"].get(example.kind, 0) + 1
        self._last_invalid = example.message
        logger.warning("source %r: skipped invalid record: %s", spec.name, example.message)
      if counts["invalid"]:
        self._check_invalid()
    if isinstance(example, InvalidRecord):
      return []
    pieces = fit_length(example, spec.max_tokens, spec.overlong, where)
    if len(example["tokens"]) > spec.max_tokens and count:
      kind = "split" if spec.overlong == "split" else "truncated"
      counts[kind] += 1
      if counts[kind] <= _LOGGED_PER_KIND:
        action = "split into pieces" if kind == "split" else "truncated"
        logger.warning("source %r: %s: example of %d tokens %s of at most %d tokens (lwm_overlong=%s)%s", spec.name,
                       where, len(example["tokens"]), action, spec.max_tokens, spec.overlong,
                       "; further ones are counted, not logged" if counts[kind] == _LOGGED_PER_KIND else "")
    features = [example_features(p, weighting=spec.weighting) for p in pieces]
    kept = [f for f in features if has_loss(f)]
    if count:
      counts["no_loss"] += len(features) - len(kept)
      counts["examples"] += len(kept)
    return kept

  def _check_invalid(self) -> None:
    counts, spec = self._counts, self._spec
    invalid = sum(counts["invalid"].values())
    if counts["read"] >= MIN_RECORDS and invalid > spec.max_invalid_fraction * counts["read"]:
      raise TooManyInvalidError(
          f"source {spec.name!r}: {invalid} of {counts['read']} records were invalid ({counts['invalid']}), more than "
          f"lwm_max_invalid_fraction={spec.max_invalid_fraction}; last: {self._last_invalid}")

  def get_state(self) -> dict[str, Any]:
    if self._pending:
      parent, taken = self._element_state, self._taken
    else:
      parent, taken = self._parent.get_state(), 0
    return {"parent": parent, "taken": taken, "counts": _copy_counts(self._counts)}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._counts = _copy_counts(state["counts"])
    self._pending, self._taken, self._element_state = [], 0, None
    if state["taken"]:
      self._element_state = self._parent.get_state()
      pieces = self._process(next(self._parent), count=False)
      self._taken = state["taken"]
      self._pending = pieces[self._taken:]

  @property
  def counts(self) -> dict[str, Any]:
    return _copy_counts(self._counts)


class ExampleStreamIterDataset(grain.IterDataset):
  """Decoded records of one source -> example features (see the module docstring)."""

  def __init__(self, parent: grain.IterDataset, *, name: str, max_tokens: int, overlong: str, weighting: str,
               max_invalid_fraction: float):
    super().__init__(parent)
    self.name, self.max_tokens, self.overlong = name, max_tokens, overlong
    self.weighting, self.max_invalid_fraction = weighting, max_invalid_fraction

  def __iter__(self) -> _ExampleStreamIterator:
    return _ExampleStreamIterator(self._parent.__iter__(), self)

  def __str__(self) -> str:
    return f"ExampleStreamIterDataset(name={self.name!r}, max_tokens={self.max_tokens}, overlong={self.overlong!r})"
