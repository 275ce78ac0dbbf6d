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

from lwm_plugin.integration import attention, config_hook
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
    Patch(
        target="maxtext.layers.attention_op:AttentionOp.apply_attention",
        params=("self", "query", "key", "value", "decoder_segment_ids", "segment_positions", "lengths", "model_mode",
                "use_ragged_attention", "previous_chunk", "bidirectional_mask", "sinks", "indexer_mask",
                "compressed_mask", "record_max_logits", "decoder_segment_ids_kv", "pad_kv_total", "compress_ratio",
                "qk_product_einsum", "wv_product_einsum"),
        make=attention.apply_attention,
        reason="`attention: ring` runs the LWM ring attention (MaxText dispatches kernels by if/elif on the name)",
        remove_when="MaxText has an attention-kernel registry",
    ),
    Patch(
        target="maxtext.utils.max_utils:reorder_causal_load_balanced",
        params=("batch", "cp_size", "reorder_strategy", "hardware"),
        make=attention.reorder_causal_load_balanced,
        reason="the load-balance reorder moves a fixed key set; LWM per-token keys (loss weights, vision mask) must "
               "move with the tokens",
        remove_when="MaxText reorders every per-token batch key (or takes the key set from the config)",
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
