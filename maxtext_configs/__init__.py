"""The plugin's MaxText YAML files, usable from a checkout and from an installed wheel.

`lwm-train NAME.yml` finds `NAME.yml` here when it is not a path to an existing file.
"""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent


def config_path(name: str) -> Path:
  """Path of a shipped config, e.g. `config_path("tiny_cpu.yml")`."""
  return CONFIG_DIR / name


def shipped_configs() -> list[Path]:
  """Every YAML file shipped with the plugin (stages, model files and the base)."""
  return sorted(CONFIG_DIR.rglob("*.yml"))
