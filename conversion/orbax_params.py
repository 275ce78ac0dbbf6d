"""MaxText parameters in Orbax checkpoints: read one leaf at a time, write one leaf at a time.

Layout (MaxText 0.2.5, Orbax v1): `<dir>/<step>/items/` is a PyTree checkpoint whose parameters
live under `params/params/...` (next to `opt_state`, `step`, ... in training checkpoints).
`load_parameters_path=<dir>/<step>/items` restores only `params`, so a converted checkpoint holds
just `{"params": {"params": tree}}` at step 0, like MaxText's own converters write.

Reading: `ocp.metadata` lists the leaves without reading data; each `read(path)` restores one leaf
(`partial_load`), so peak memory is one tensor. A checkpoint is user input: before Orbax sees it,
its two JSON metadata files and (for OCDBT) its manifest are checked to exist and parse, because
Orbax answers a corrupt metadata file with a logged warning and an empty tree, and a missing one
with an internal layout error. Any error Orbax or TensorStore raises while reading becomes a
ConversionError naming the directory (and the leaf). A failed read also leaves TensorStore callbacks
that reach Orbax's event loop after it closed; `quiet_failed_read_noise` keeps their tracebacks off
a command line whose error message has already said what is wrong.

Writing: MaxText's `save_weights_to_checkpoint` needs the whole model in memory. We use Orbax's
partial save instead (`ocp.partial.save` per leaf, then `ocp.partial.finalize`), so peak memory is
one leaf. Partial save names its PyTree checkpointable `state`; MaxText loads `items`, so
`finish()` renames the directory and records the PyTree handler for it in `_CHECKPOINT_METADATA`.
That is the one place we depend on Orbax's on-disk layout; the tests load the result through
MaxText's own `load_parameters_path` path, so a layout change fails there. Storage options come
from MaxText's `checkpoint_context.build_context` (OCDBT + zarr3, MaxText's chunk size).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from maxtext.common import checkpoint_context
from maxtext.utils import globals as maxtext_globals
from orbax.checkpoint import v1 as ocp

from conversion.spec import ConversionError, read_json_object

LeafPath = tuple[str, ...]
ITEMS = "items"
_PARTIAL_SAVE_NAME = "state"          # the checkpointable name `ocp.partial.save` uses
_METADATA_FILE = "_CHECKPOINT_METADATA"
_PYTREE_METADATA_FILE = "_METADATA"   # inside `items`
_OCDBT_MANIFEST = "manifest.ocdbt"


def _context() -> ocp.Context:
  target = maxtext_globals.DEFAULT_OCDBT_TARGET_DATA_FILE_SIZE
  return checkpoint_context.build_context(use_ocdbt=True, use_zarr3=True, ocdbt_target_data_file_size_bytes=target,
                                          partial_load=True)


def _nest(path: LeafPath, value: Any) -> dict:
  tree: Any = value
  for key in reversed(path):
    tree = {key: tree}
  return {"params": {"params": tree}}


def _flatten(tree: Any, prefix: LeafPath = ()) -> dict[LeafPath, Any]:
  if isinstance(tree, dict):
    out: dict[LeafPath, Any] = {}
    for key, sub in tree.items():
      out.update(_flatten(sub, prefix + (str(key),)))
    return out
  return {prefix: tree}


def step_dir_of(checkpoint: str | os.PathLike) -> Path:
  """`<dir>/<step>/items` or `<dir>/<step>` -> `<dir>/<step>` (checked to hold an `items` PyTree)."""
  path = Path(checkpoint).absolute()   # Orbax refuses relative paths
  step = path.parent if path.name == ITEMS else path
  if not (step / ITEMS).is_dir():
    raise ConversionError(f"{checkpoint}: not a MaxText checkpoint (expected <dir>/<step>/items, "
                          f"e.g. .../checkpoints/0/items; found no {step / ITEMS})")
  return step


def _json_object(path: Path) -> dict:
  """The JSON object in `path`, or a ConversionError naming the file."""
  if not path.is_file():
    raise ConversionError(f"{path}: missing; not a complete Orbax checkpoint")
  return read_json_object(path, "Orbax metadata")


def _check_layout(step_dir: Path) -> None:
  """The metadata files Orbax needs exist and parse (a corrupt or missing one is named here)."""
  _json_object(step_dir / _METADATA_FILE)
  items_meta = _json_object(step_dir / ITEMS / _PYTREE_METADATA_FILE)
  if not isinstance(items_meta.get("tree_metadata"), dict):
    raise ConversionError(f"{step_dir / ITEMS / _PYTREE_METADATA_FILE}: no tree_metadata object; "
                          "not an Orbax PyTree checkpoint")
  if items_meta.get("use_ocdbt") and not (step_dir / ITEMS / _OCDBT_MANIFEST).is_file():
    raise ConversionError(f"{step_dir / ITEMS}: missing {_OCDBT_MANIFEST}; not a complete Orbax checkpoint")


def quiet_failed_read_noise() -> None:
  """Process-wide (for command lines): drops the two kinds of noise a failed Orbax read leaves.

  asyncio logs "Task exception was never retrieved" with a traceback for Orbax's failed tasks, and
  TensorStore threads completing futures after Orbax closed its uvloop raise "Event loop is closed"
  as unraisable exceptions (printed as bare tracebacks, often at exit). Both follow an error that
  `ParamsReader` has already turned into a ConversionError. Other unraisable exceptions still print.
  """
  logging.getLogger("asyncio").setLevel(logging.CRITICAL)
  previous = sys.unraisablehook
  if getattr(previous, "lwm_closed_loop_filter", False):
    return

  def hook(unraisable):
    if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
      return
    previous(unraisable)

  hook.lwm_closed_loop_filter = True   # type: ignore[attr-defined]
  sys.unraisablehook = hook


def _first_line(e: BaseException) -> str:
  """The gist of an Orbax/TensorStore error: its first line, without TensorStore's long spec dump."""
  text = str(e).strip()
  first = text.splitlines()[0] if text else ""
  return f"{type(e).__name__}: {first.split(' [tensorstore_spec=')[0]}"


class ParamsReader:
  """The `params/params` leaves of a MaxText checkpoint, restored one by one."""

  def __init__(self, checkpoint: str | os.PathLike):
    self.step_dir = step_dir_of(checkpoint)
    _check_layout(self.step_dir)
    try:
      with _context():
        tree = ocp.metadata(self.step_dir, checkpointable_name=ITEMS).metadata
    except Exception as e:   # pylint: disable=broad-exception-caught  (Orbax raises many kinds; all mean unreadable)
      raise ConversionError(f"{self.step_dir}: Orbax cannot read this checkpoint's metadata ({_first_line(e)})") from e
    if tree is None:
      raise ConversionError(f"{self.step_dir / ITEMS}: Orbax cannot read this checkpoint's metadata")
    params = tree.get("params", {}).get("params") if isinstance(tree, dict) else None
    if not params:
      raise ConversionError(f"{self.step_dir / ITEMS}: no params/params subtree in this checkpoint")
    self._meta = _flatten(params)

  def shapes(self) -> dict[LeafPath, tuple[int, ...]]:
    return {path: tuple(m.shape) for path, m in self._meta.items()}

  def dtype(self, path: LeafPath) -> np.dtype:
    return np.dtype(self._meta[path].dtype)

  def read(self, path: LeafPath) -> np.ndarray:
    meta = self._meta[path]
    try:
      with _context():
        restored = ocp.load(self.step_dir, _nest(path, np.empty(meta.shape, meta.dtype)), checkpointable_name=ITEMS)
    except Exception as e:   # pylint: disable=broad-exception-caught  (TensorStore/Orbax errors: damaged data)
      raise ConversionError(f"{self.step_dir / ITEMS}: cannot read {'/'.join(path)} ({_first_line(e)})") from e
    leaf: Any = restored["params"]["params"]
    for key in path:
      leaf = leaf[key]
    return np.asarray(leaf)


class ParamsWriter:
  """Writes a params-only MaxText checkpoint at `step_dir` (e.g. `<tmp>/0`), one leaf per call."""

  def __init__(self, step_dir: Path, scan_layers: bool):
    self.step_dir = Path(step_dir)
    self._metadata = {"scan_layers": scan_layers}
    self._count = 0

  def add(self, path: LeafPath, x: np.ndarray) -> None:
    with _context():
      ocp.partial.save(self.step_dir, _nest(path, np.ascontiguousarray(x)), custom_metadata=self._metadata)
    self._count += 1

  def finish(self) -> Path:
    """Finalizes the partial save and exposes the tree as `items`; returns `<step_dir>/items`."""
    if not self._count:
      raise ConversionError("no parameters were written")
    with _context():
      ocp.partial.finalize(self.step_dir)
    saved = self.step_dir / _PARTIAL_SAVE_NAME
    meta_file = self.step_dir / _METADATA_FILE
    if not saved.is_dir() or not meta_file.is_file():
      raise ConversionError(f"Orbax's partial save layout changed (no {saved} or {meta_file}); "
                            "this orbax-checkpoint version is not supported by the converter")
    os.rename(saved, self.step_dir / ITEMS)
    metadata = json.loads(meta_file.read_text(encoding="utf-8"))
    handler = ocp.handlers.PyTreeHandler
    metadata["item_handlers"] = {ITEMS: f"{handler.__module__}.{handler.__qualname__}"}
    tmp = meta_file.with_name(meta_file.name + ".tmp")
    tmp.write_text(json.dumps(metadata), encoding="utf-8")
    os.replace(tmp, meta_file)
    return self.step_dir / ITEMS
