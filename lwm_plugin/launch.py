"""The one rule every MaxText command line follows: choose JAX's platform, then import MaxText.

JAX reads `JAX_PLATFORMS` once, when it is imported (and MaxText imports JAX): a process that imports
MaxText before the variable is set keeps JAX's own choice, and an installed libtpu then probes for a
TPU on a CPU run. So each command line checks its arguments with cheap modules only (`--help` and every
usage error answer at once), then asks this module for its heavy half: `train_apps` (lwm-train,
lwm-convert) or `decode_apps` (lwm-eval, lwm-generate, lwm-make-qa). Each sets the platform and only
then imports the module that gathers those apps' MaxText-side entry points, and returns it.

Two halves, not one: the decoding apps bring MaxText's model zoo, the KV-cache decoder and Beam, which
lwm-train and lwm-convert never use (`python -X importtime` on the 2-core development host: about 20 s
for the decoding half against 11 s for the training half). lwm-vision needs JAX and Beam but no
MaxText, and keeps its own import (`vision_cli`).

This module imports nothing heavy at the top, and nothing below the command lines imports it.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Sequence

from lwm_plugin.config.files import peek


def set_platform(config_file: str | None, overrides: Sequence[str] = (), *, aot: bool = False) -> None:
  """Sets `JAX_PLATFORMS` (for this process and the ones it starts) before JAX is imported.

  aot: an ahead-of-time compile for a TPU pod (`--check`), which needs no device: JAX on the host
  CPU whatever the environment says, and libtpu allowed to load beside another process.
  config_file None: a run with no model config to read (lwm-convert, which always runs on the host;
  lwm-make-qa with an endpoint generator): the host CPU, unless JAX_PLATFORMS is already set.
  Otherwise the config's `hardware` (overrides and M_HARDWARE included, `config.files.peek`): `cpu`
  sets JAX_PLATFORMS=cpu unless it is already set; any other value leaves JAX its own choice.
  Raises ConfigError when the config cannot be read.
  """
  if aot:
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  elif config_file is None or peek(config_file, overrides, "hardware") == "cpu":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def train_apps(config_file: str | None, overrides: Sequence[str] = (), *, aot: bool = False) -> ModuleType:
  """`set_platform`, then `lwm_plugin.train_apps` (`training`, `checkpoints`): MaxText and JAX imported."""
  set_platform(config_file, overrides, aot=aot)
  from lwm_plugin import train_apps as apps  # pylint: disable=import-outside-toplevel  (MaxText after JAX_PLATFORMS)

  return apps


def decode_apps(config_file: str | None, overrides: Sequence[str] = (), *, aot: bool = False) -> ModuleType:
  """`set_platform`, then `lwm_plugin.decode_apps` (`needle_run`, `engine`, `qa_run`): MaxText, JAX, Beam."""
  set_platform(config_file, overrides, aot=aot)
  from lwm_plugin import decode_apps as apps  # pylint: disable=import-outside-toplevel  (MaxText after JAX_PLATFORMS)

  return apps
