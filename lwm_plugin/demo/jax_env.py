"""The demo's JAX environment: 4 fake CPU devices, set before JAX is first imported.

The host platform's device count is fixed when JAX initialises, so `python -m lwm_plugin.demo`
calls `configure()` before it imports anything that imports JAX (the data generator does).
"""

from __future__ import annotations

import os
import sys

DEVICES = 4  # the tiny chain's mesh: ici_context_parallelism 4
_COUNT_FLAG = f"--xla_force_host_platform_device_count={DEVICES}"


def configure() -> None:
  """Sets XLA_FLAGS / JAX_PLATFORMS for the demo; raises if JAX was imported without them."""
  flags = os.environ.get("XLA_FLAGS", "")
  if _COUNT_FLAG in flags.split() and os.environ.get("JAX_PLATFORMS") == "cpu":
    return
  if "jax" in sys.modules:
    raise RuntimeError("the demo must configure JAX before it is imported; run it as `python -m lwm_plugin.demo`")
  flags = " ".join(f for f in flags.split() if not f.startswith("--xla_force_host_platform_device_count="))
  flags += f" {_COUNT_FLAG}"
  if "xla_cpu_collective_call_terminate_timeout_seconds" not in flags:
    flags += " --xla_cpu_collective_call_terminate_timeout_seconds=600"  # a loaded 2-core host is slow
  os.environ["XLA_FLAGS"] = flags.strip()
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
