"""Patch machinery for the one seam into MaxText: `Patch` and `Used` records, install/uninstall, tripwires.

MaxText 0.2.5 has no plugin API (no registry, no entry points), so the plugin replaces a handful of
module or class attributes. Every replacement is a `Patch` row in `lwm_plugin.integration.PATCH_TABLE`:
what it replaces, why, and when it can go. Every MaxText internal the plugin calls without replacing
it (a private method, a long keyword call) is a `Used` row in `USED_TABLE`. Before touching anything,
`install()` checks each row's signature against the parameters we were written for (a tripwire) and
raises if MaxText moved, so an upgrade fails loudly at start-up instead of training with a silently
bypassed hook or failing deep inside a step.

Nothing here runs on import; targets are resolved lazily by dotted path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import logging
import threading
from typing import Any, Callable, Iterator, Sequence

logger = logging.getLogger("lwm_plugin.integration")


class SeamError(RuntimeError):
  """MaxText does not look like the version this plugin was written for."""


class _Target:
  """What every seam row shares: `target` ("module.path:Attr" or "module.path:Class.attr"), `params`
  (the parameter names the original must have, in order: the tripwire), resolution and the check."""

  target: str
  params: tuple[str, ...]

  def resolve(self) -> tuple[Any, str]:
    """Returns (owner object, attribute name) for the target."""
    module_name, _, qualname = self.target.partition(":")
    if not qualname:
      raise SeamError(f"seam target {self.target!r} must look like 'module:attr'")
    try:
      owner: Any = importlib.import_module(module_name)
    except ImportError as e:
      raise SeamError(f"seam target {self.target!r}: cannot import {module_name!r} ({e})") from e
    *path, attr = qualname.split(".")
    for name in path:
      if not hasattr(owner, name):
        raise SeamError(f"seam target {self.target!r}: {name!r} not found; MaxText moved (expected 0.2.5)")
      owner = getattr(owner, name)
    if not hasattr(owner, attr):
      raise SeamError(f"seam target {self.target!r}: attribute {attr!r} not found; MaxText moved (expected 0.2.5)")
    return owner, attr

  def check_signature(self, original: Any) -> None:
    """Raises SeamError unless `original` takes exactly the parameters we expect."""
    try:
      found = tuple(inspect.signature(original).parameters)
    except (TypeError, ValueError) as e:
      raise SeamError(f"seam target {self.target!r}: cannot read its signature ({e})") from e
    if found != self.params:
      raise SeamError(
          f"seam target {self.target!r} changed signature: expected {self.params}, found {found}. "
          "MaxText moved; update lwm_plugin/integration for this version."
      )


@dataclasses.dataclass(frozen=True)
class Patch(_Target):
  """One replaced attribute of MaxText.

  make: builds the replacement from the original (so wrappers can delegate).
  reason: why we patch instead of configuring MaxText.
  remove_when: the MaxText change that would make this patch unnecessary.
  """

  target: str
  params: tuple[str, ...]
  make: Callable[[Any], Any]
  reason: str
  remove_when: str


@dataclasses.dataclass(frozen=True)
class Used(_Target):
  """One MaxText internal the plugin calls but does not replace (checked, never patched).

  reason: why we call it instead of a public API or configuration.
  remove_when: the MaxText change that would let us stop.
  """

  target: str
  params: tuple[str, ...]
  reason: str
  remove_when: str


@dataclasses.dataclass
class _Applied:
  patch: Patch
  owner: Any
  attr: str
  original_raw: Any  # exactly what was in owner.__dict__ (keeps staticmethod/classmethod wrappers)
  had_own_attr: bool


class Seam:
  """Installs and removes a fixed table of patches, checking the used internals too; idempotent, thread-safe."""

  def __init__(self, table: Sequence[Patch], used: Sequence[Used] = ()):
    self._table = tuple(table)
    self._used = tuple(used)
    self._applied: list[_Applied] = []
    self._lock = threading.Lock()

  @property
  def table(self) -> tuple[Patch, ...]:
    return self._table

  def is_installed(self) -> bool:
    return bool(self._applied)

  def check(self) -> list[tuple[Patch, Any]]:
    """Resolves every target (patched and used) and checks its signature without changing anything.

    Returns (patch, original) for the patch rows."""
    found = []
    for row in (*self._table, *self._used):
      owner, attr = row.resolve()
      original = getattr(owner, attr)
      row.check_signature(original)
      if isinstance(row, Patch):
        found.append((row, original))
    return found

  def install(self) -> list[str]:
    """Applies every patch once; a second call is a no-op. Returns the install report lines."""
    with self._lock:
      if self._applied:
        return self.report()
      resolved = self.check()  # all tripwires first: nothing is patched if any target moved
      for patch, original in resolved:
        owner, attr = patch.resolve()
        had_own = attr in vars(owner)
        raw = vars(owner)[attr] if had_own else None
        setattr(owner, attr, patch.make(original))
        self._applied.append(_Applied(patch, owner, attr, raw, had_own))
      lines = self.report()
      for line in lines:
        logger.info(line)
      return lines

  def uninstall(self) -> None:
    """Restores every original attribute, in reverse order."""
    with self._lock:
      for applied in reversed(self._applied):
        if applied.had_own_attr:
          setattr(applied.owner, applied.attr, applied.original_raw)
        else:
          delattr(applied.owner, applied.attr)
      self._applied.clear()

  def report(self) -> list[str]:
    state = "installed" if self._applied else "not installed"
    lines = [f"lwm_plugin seam: {len(self._table)} patches, {state}"]
    for patch in self._table:
      lines.append(f"  {patch.target}: {patch.reason} (remove when: {patch.remove_when})")
    if self._used:
      lines.append(f"lwm_plugin seam: {len(self._used)} MaxText internals used unpatched (signatures checked)")
    for used in self._used:
      lines.append(f"  {used.target}: {used.reason} (remove when: {used.remove_when})")
    return lines

  @contextlib.contextmanager
  def installed(self) -> Iterator[None]:
    """Scoped install for tests: patches inside the block, originals restored after.

    If the seam was already installed on entry it stays installed on exit.
    """
    was_installed = self.is_installed()
    self.install()
    try:
      yield
    finally:
      if not was_installed:
        self.uninstall()
