"""The seam: tripwires, idempotent install, exact uninstall, the scoped form, no patching on import."""

import dataclasses
import subprocess
import sys

import pytest

from lwm_plugin import integration
from lwm_plugin.integration.core import Patch, Seam, SeamError, Used


def _current(patch: Patch):
  owner, attr = patch.resolve()
  return vars(owner).get(attr, getattr(owner, attr))


def test_every_target_exists_with_expected_signature():
  integration.check()  # raises SeamError if MaxText moved
  for row in (*integration.PATCH_TABLE, *integration.USED_TABLE, *integration.CONVERSION_USED_TABLE):
    assert row.reason and row.remove_when, row.target


def test_install_twice_equals_once_and_uninstall_restores():
  originals = [_current(p) for p in integration.PATCH_TABLE]
  try:
    first = integration.install()
    patched = [_current(p) for p in integration.PATCH_TABLE]
    assert all(a is not b for a, b in zip(patched, originals))
    second = integration.install()
    assert first == second
    assert [_current(p) for p in integration.PATCH_TABLE] == patched  # not wrapped twice
  finally:
    integration.uninstall()
  assert all(a is b for a, b in zip([_current(p) for p in integration.PATCH_TABLE], originals))
  assert not integration.is_installed()


def test_installed_is_scoped():
  originals = [_current(p) for p in integration.PATCH_TABLE]
  with integration.installed():
    assert integration.is_installed()
    assert all(a is not b for a, b in zip([_current(p) for p in integration.PATCH_TABLE], originals))
  assert not integration.is_installed()
  assert all(a is b for a, b in zip([_current(p) for p in integration.PATCH_TABLE], originals))


def test_tripwire_rejects_a_moved_signature_and_patches_nothing():
  good = integration.PATCH_TABLE[0]
  moved = Patch(target="maxtext.utils.max_utils:maybe_initialize_jax_distributed_system",
                params=("raw_keys", "extra"), make=lambda o: o, reason="test", remove_when="test")
  seam = Seam([good, moved])
  before = _current(good)
  with pytest.raises(SeamError, match="changed signature"):
    seam.install()
  assert _current(good) is before  # the good patch was not applied either
  with pytest.raises(SeamError, match="not found"):
    Seam([Patch("maxtext.configs.pyconfig:no_such_function", (), lambda o: o, "t", "t")]).install()


def test_a_used_internal_that_moved_stops_install_and_is_never_patched():
  good = integration.PATCH_TABLE[0]
  used = Used(target="maxtext.layers.attention_op:AttentionOp.normalize_attention", params=("self", "query"),
              reason="test", remove_when="test")
  before = _current(good)
  with pytest.raises(SeamError, match="AttentionOp.normalize_attention' changed signature"):
    Seam([good], used=[used]).install()
  assert _current(good) is before
  right = dataclasses.replace(integration.USED_TABLE[0])
  original = _current(right)
  seam = Seam([good], used=[right])
  with seam.installed():
    assert _current(right) is original  # checked, not replaced
    assert any(right.target in line for line in seam.report())


def test_config_class_patch_adds_lwm_keys():
  from maxtext.configs import pyconfig  # pylint: disable=import-outside-toplevel

  from lwm_plugin.config.lwm_config import LWMConfig  # pylint: disable=import-outside-toplevel
  from maxtext_configs import config_path  # pylint: disable=import-outside-toplevel

  argv = ["test", str(config_path("tiny_cpu.yml"))]
  with integration.installed():
    cfg = pyconfig.initialize(argv)  # what MaxText's trainer calls
  assert cfg.lwm_stage == "tiny-cpu"
  assert isinstance(cfg._pydantic_config, LWMConfig)  # pylint: disable=protected-access


def test_import_does_not_patch():
  code = ("import lwm_plugin, lwm_plugin.integration, lwm_plugin.train\n"
          "from maxtext.configs import pyconfig\n"
          "assert pyconfig.initialize.__module__ == 'maxtext.configs.pyconfig', pyconfig.initialize.__module__\n"
          "assert not lwm_plugin.integration.is_installed()\n")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
