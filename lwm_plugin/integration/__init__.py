"""The one seam into MaxText 0.2.5: every attribute the plugin replaces, and why.

Only this subpackage, `lwm_plugin.config` and the entry points import MaxText (a test enforces
the allow-list). Use:

  from lwm_plugin import integration
  integration.install()            # idempotent; logs the install report; raises SeamError if MaxText moved
  with integration.installed():    # scoped form for tests: originals restored on exit
    ...

Nothing is patched on import.
"""

from __future__ import annotations

from typing import Any, Sequence

from lwm_plugin.integration import config_hook
from lwm_plugin.integration.core import Patch, Seam, SeamError

# ---------------------------------------------------------------------------------------------
# The patch table. Each row: target, expected parameters (tripwire), replacement factory,
# reason, and the MaxText change that would let us drop it.
# ---------------------------------------------------------------------------------------------
PATCH_TABLE: tuple[Patch, ...] = (
    Patch(
        target="maxtext.configs.pyconfig:initialize",
        params=("argv", "config_class", "kwargs"),
        make=config_hook.config_class_default,
        reason="MaxText's trainer calls pyconfig.initialize(argv) with its own class, which rejects lwm_* keys",
        remove_when="the trainer accepts a config_class (or a plugin registry for config fields)",
    ),
)

# Used only while resolving a config without training (`lwm-train --print-config`).
RESOLVE_ONLY_TABLE: tuple[Patch, ...] = (
    Patch(
        target="maxtext.utils.max_utils:maybe_initialize_jax_distributed_system",
        params=("raw_keys",),
        make=config_hook.no_distributed_init,
        reason="printing a TPU pod's resolved config must not try to join the pod",
        remove_when="pyconfig separates config resolution from jax.distributed initialization",
    ),
)

_SEAM = Seam(PATCH_TABLE)
_RESOLVE_SEAM = Seam(RESOLVE_ONLY_TABLE)


def install() -> list[str]:
  """Applies the patch table (idempotent). Returns the report lines it logged."""
  return _SEAM.install()


def uninstall() -> None:
  """Restores MaxText's original attributes."""
  _SEAM.uninstall()


def installed():
  """Context manager: the plugin installed inside the block only (for tests)."""
  return _SEAM.installed()


def is_installed() -> bool:
  return _SEAM.is_installed()


def check() -> None:
  """Tripwires only: raises SeamError if any target moved; patches nothing."""
  _SEAM.check()
  _RESOLVE_SEAM.check()


def report() -> list[str]:
  return _SEAM.report()


def resolve_config(argv: Sequence[str]) -> Any:
  """The fully resolved pydantic config for `argv` = [prog, CONFIG.yml, key=value, ...].

  Does not initialize the JAX distributed system, so a pod config resolves on any machine.
  """
  from maxtext.configs import pyconfig  # pylint: disable=import-outside-toplevel

  from lwm_plugin.config import LWMConfig  # pylint: disable=import-outside-toplevel

  with _RESOLVE_SEAM.installed():
    return pyconfig.initialize_pydantic(list(argv), config_class=LWMConfig)


__all__ = ["PATCH_TABLE", "Patch", "SeamError", "check", "install", "installed", "is_installed", "report",
           "resolve_config", "uninstall"]
