"""Probes: bad inputs x `lwm-convert` subcommands, as a user meets them.

Each probe runs the command line (`lwm_plugin.convert.main`, in process; two through a subprocess) on a
bad input and asserts the whole contract: exit code 2, one `lwm-convert: error:` line that names the
file or tensor at fault, no traceback, and nothing written (no output directory, no `.partial-*`,
the inputs untouched). The inputs are small models in the shape of `tiny_cpu.yml` (`models/tiny.yml`).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import REPO, subprocess_env
from conversion import from_hf, names, to_hf
from lwm_plugin import convert as cli
from conversion.orbax_params import ParamsReader, ParamsWriter
from conversion.spec import ModelSpec
from lwm_checkpoints import lwm_tree, write_lwm
from torch_checkpoints import StorageRecord, TensorRecord, write_bin

CONFIG = "tiny_cpu.yml"
# models/tiny.yml as the converters see it (check_hf_config compares every dimension with the config's).
SPEC = ModelSpec(E=64, H=4, K=2, D=16, M=128, L=2, V=512, norm_eps=1e-5, rope_theta=1e4, max_positions=256,
                 tie_embeddings=False, scan_layers=True)
# from-lwm: LWM models are multi-head (K = H) with the LLaMA-2 text vocabulary of the default tokenizer.
LWM_OVERRIDES = ["base_num_kv_heads=4", "vocab_size=32000"]
VICTIM = "model.layers.1.mlp.up_proj.weight"


def _weights(spec=SPEC):
  rng = np.random.default_rng(0)
  return {name: (0.1 * rng.standard_normal(shape)).astype(np.float32)
          for name, shape in names.hf_shapes(names.table(spec, True)).items()}


def _hf_config(path, spec=SPEC):
  config = spec.hf_config(dtype="float32", bos_token_id=1, eos_token_id=2, pad_token_id=None)
  (path / "config.json").write_text(json.dumps(config))


def _safetensors_dir(path, weights):
  path.mkdir()
  save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
  _hf_config(path)
  return path


def _bin_dir(path, weights, tamper=None):
  """A `pytorch_model.bin` directory; `tamper(records, storages)` edits the records of VICTIM."""
  path.mkdir()
  tensors, storages = {}, {}
  for i, (name, x) in enumerate(weights.items()):
    tensors[name] = TensorRecord(str(i), 0, x.shape, tuple(s // 4 for s in x.strides))
    storages[str(i)] = StorageRecord("FloatStorage", x.size, x.tobytes())
  if tamper:
    tamper(tensors, storages)
  write_bin(path / "pytorch_model.bin", tensors, storages)
  _hf_config(path)
  return path


def _rewrite_checkpoint(src_items, dst, change):
  """A copy of a MaxText checkpoint at `dst/0/items` with `change(path, leaf)` applied to every leaf."""
  reader = ParamsReader(src_items)
  writer = ParamsWriter(dst / "0", scan_layers=True)
  for path in reader.shapes():
    writer.add(path, change(path, reader.read(path)))
  return writer.finish()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """Valid inputs the probes break: a Hugging Face directory, a MaxText checkpoint, an LWM params file."""
  root = tmp_path_factory.mktemp("inputs")
  hf = _safetensors_dir(root / "hf", _weights())
  from_hf.convert(SPEC, hf, root / "mt", vocab=None, progress=False)
  write_lwm(root / "lwm_params", lwm_tree(E=64, H=4, M=128, L=2, text_rows=32000, vision_rows=0))
  return root


def _snapshot(path: Path) -> dict[str, bytes]:
  return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(path.rglob("*"))}


def _probe(capsys, work: Path, argv: list[str], *messages: str) -> None:
  """Runs `lwm-convert ARGV` in process; asserts rc 2, the message, no traceback, nothing written in `work`."""
  before = _snapshot(work)
  rc = cli.main([*argv, "--no-progress"])
  err = capsys.readouterr().err
  assert rc == 2, err[-3000:]
  lines = [line for line in err.splitlines() if line.startswith("lwm-convert: error:")]
  assert len(lines) == 1, err[-3000:]
  for message in messages:
    assert message in lines[0], lines[0]
  assert "Traceback" not in err, err[-3000:]
  assert _snapshot(work) == before   # no output, no .partial-*, inputs untouched


def _from_hf(hf, out, *extra):
  return ["from-hf", "--config", CONFIG, "--hf", str(hf), "--output", str(out), *extra]


def _to_hf(items, out, *extra):
  return ["to-hf", "--config", CONFIG, "--checkpoint", str(items), "--output", str(out), "--no-tokenizer", *extra]


# ------------------------------------------------------------------------------------------ from-hf
def _huge_stride(tensors, _):
  tensors[VICTIM].stride = (1 << 28, 1)


def _short_storage(tensors, storages):
  key = tensors[VICTIM].key
  storages[key] = StorageRecord("FloatStorage", 100, storages[key].data[:400])


def _negative_offset(tensors, _):
  tensors[VICTIM].offset = -1


def _overflowing_offset(tensors, _):
  tensors[VICTIM].offset = 1 << 62


def _dtype_mismatch(tensors, storages):
  key = tensors[VICTIM].key
  storages[key] = StorageRecord("HalfStorage", storages[key].numel, storages[key].data)   # float32 bytes


@pytest.mark.parametrize("tamper, message", [
    (_huge_stride, "reach element"), (_short_storage, "reach element"), (_negative_offset, "negative offset"),
    (_overflowing_offset, "reach element"), (_dtype_mismatch, "is declared as"),
])
def test_from_hf_crafted_pytorch_bin(tmp_path, capsys, tamper, message):
  hf = _bin_dir(tmp_path / "hf", _weights(), tamper)
  _probe(capsys, tmp_path, _from_hf(hf, tmp_path / "out"),
         f"{hf / 'pytorch_model.bin'}: tensor '{VICTIM}':", message)


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_from_hf_non_finite_weight(tmp_path, capsys, value, fmt):
  weights = _weights()
  weights[VICTIM][3, 5] = value
  make = _safetensors_dir if fmt == "safetensors" else _bin_dir
  hf = make(tmp_path / "hf", weights)
  _probe(capsys, tmp_path, _from_hf(hf, tmp_path / "out"), f"{hf}: tensor {VICTIM} has", "(first at index (3, 5))")


def test_from_hf_cast_overflow(tmp_path, capsys):
  weights = _weights()
  weights[VICTIM][0, 0] = 1e5   # float16 tops out at 65504
  hf = _safetensors_dir(tmp_path / "hf", weights)
  _probe(capsys, tmp_path, _from_hf(hf, tmp_path / "out", "--dtype", "float16"),
         "decoder/layers/mlp/wi_1/kernel has 0 NaN and 1 infinite value(s) after the cast to float16")


def test_from_hf_truncated_safetensors(tmp_path, capsys, inputs):
  hf = shutil.copytree(inputs / "hf", tmp_path / "hf")
  data = (hf / "model.safetensors").read_bytes()
  (hf / "model.safetensors").write_bytes(data[:len(data) // 2])
  _probe(capsys, tmp_path, _from_hf(hf, tmp_path / "out"), f"{hf / 'model.safetensors'}: not a readable safetensors")


def test_from_hf_bad_config_json(tmp_path, capsys, inputs):
  hf = shutil.copytree(inputs / "hf", tmp_path / "hf")
  (hf / "config.json").write_text('{"model_type": "llama", ')
  _probe(capsys, tmp_path, _from_hf(hf, tmp_path / "out"), f"{hf / 'config.json'}: unreadable Hugging Face config")
  (hf / "config.json").write_text('{"model_type": "llama"}')
  _probe(capsys, tmp_path, _from_hf(hf, tmp_path / "out"), "hidden_size=None, expected a positive integer")


def test_from_hf_missing_input_and_bad_outputs(tmp_path, capsys, inputs):
  _probe(capsys, tmp_path, _from_hf(tmp_path / "nowhere", tmp_path / "out"), f"{tmp_path / 'nowhere'}: no config.json")
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "mine.txt").write_text("keep me")
  _probe(capsys, tmp_path, _from_hf(inputs / "hf", tmp_path / "out"), f"output {tmp_path / 'out'} already exists")
  _probe(capsys, tmp_path, _from_hf(inputs / "hf", tmp_path / "no" / "out"),
         f"output's parent directory {tmp_path / 'no'} does not exist")


# -------------------------------------------------------------------------------- to-hf, extend-vocab
def _break_file(name, content):
  def brk(step):
    if content is None:
      (step / name).unlink()
    else:
      (step / name).write_bytes(content)
  return brk


_ORBAX_FAULTS = {
    "bad_json": (_break_file("_CHECKPOINT_METADATA", b"{not json"), "_CHECKPOINT_METADATA", "unreadable Orbax metadata"),
    "no_checkpoint_metadata": (_break_file("_CHECKPOINT_METADATA", None), "_CHECKPOINT_METADATA", "missing"),
    "tree_not_object": (_break_file("items/_METADATA", b"[1, 2]"), "items/_METADATA", "expected a JSON object"),
    "no_tree_metadata": (_break_file("items/_METADATA", None), "items/_METADATA", "missing"),
    "no_manifest": (_break_file("items/manifest.ocdbt", None), "items", "missing manifest.ocdbt"),
    "bad_manifest": (_break_file("items/manifest.ocdbt", b"xx"), "items", "Orbax cannot read this checkpoint's metadata"),
}


@pytest.mark.parametrize("command, fault", [*(("to-hf", f) for f in _ORBAX_FAULTS), ("extend-vocab", "bad_json"),
                                            ("extend-vocab", "no_manifest")])
def test_corrupt_orbax_metadata(tmp_path, capsys, inputs, command, fault):
  broken, fault, message = _ORBAX_FAULTS[fault]
  step = shutil.copytree(inputs / "mt" / "0", tmp_path / "mt" / "0")
  broken(step)
  argv = _to_hf(step / "items", tmp_path / "out") if command == "to-hf" else [
      "extend-vocab", "--config", CONFIG, "--checkpoint", str(step / "items"), "--output", str(tmp_path / "out"),
      "vocab_size=40448"]
  _probe(capsys, tmp_path, argv, f"{step / fault}", message)


@pytest.mark.parametrize("value, extra", [(np.nan, []), (1e5, ["--dtype", "float16"])])
def test_to_hf_non_finite_checkpoint(tmp_path, capsys, inputs, value, extra):
  def poison(path, x):
    if path == ("decoder", "layers", "mlp", "wi_1", "kernel"):   # [E, L, M]: layer 1's up_proj, at [5, 3]
      x = x.copy()
      x[3, 1, 5] = value
    return x
  items = _rewrite_checkpoint(inputs / "mt" / "0" / "items", tmp_path / "mt", poison)
  if extra:   # a finite checkpoint whose value overflows the output dtype: the output tensor is named
    message = f"{VICTIM} has 0 NaN and 1 infinite value(s) after the cast to float16 (first at index (5, 3))"
  else:
    message = f"checkpoint {items.parent}: tensor decoder/layers/mlp/wi_1/kernel has 1 NaN and 0 infinite " \
              "value(s) (first at index (3, 1, 5))"
  _probe(capsys, tmp_path, _to_hf(items, tmp_path / "out", *extra), message)


def test_to_hf_missing_checkpoint(tmp_path, capsys):
  _probe(capsys, tmp_path, _to_hf(tmp_path / "run" / "checkpoints" / "9" / "items", tmp_path / "out"),
         "not a MaxText checkpoint")


# ---------------------------------------------------------------------------------------- from-lwm
def _from_lwm(params, out):
  return ["from-lwm", "--config", CONFIG, "--lwm", str(params), "--output", str(out), *LWM_OVERRIDES]


def test_from_lwm_bad_files(tmp_path, capsys, inputs):
  tree = lwm_tree(E=64, H=4, M=128, L=2, text_rows=32000, vision_rows=0)
  key = ("transformer", "h", "scan_decoder", "attention", "wq", "kernel")
  tree[key][1, 2, 3] = np.nan
  write_lwm(tmp_path / "nan_params", tree)
  _probe(capsys, tmp_path, _from_lwm(tmp_path / "nan_params", tmp_path / "out"),
         f"{tmp_path / 'nan_params'}: tensor transformer/h/scan_decoder/attention/wq/kernel has 1 NaN",
         "(first at index (1, 2, 3))")
  data = (inputs / "lwm_params").read_bytes()
  (tmp_path / "cut_params").write_bytes(data[:len(data) - 1000])
  _probe(capsys, tmp_path, _from_lwm(tmp_path / "cut_params", tmp_path / "out"), f"{tmp_path / 'cut_params'}",
         "file is truncated")
  _probe(capsys, tmp_path, _from_lwm(tmp_path / "missing", tmp_path / "out"),
         f"{tmp_path / 'missing'}: no such LWM params file")


# ---------------------------------------------------------------------------------------- umask
def test_outputs_follow_the_umask(tmp_path, inputs):
  # Files were once created 0600 whatever the umask; every converter output follows it.
  old = os.umask(0o027)
  try:
    from_hf.convert(SPEC, inputs / "hf", tmp_path / "mt", vocab=None, progress=False)
    to_hf.convert(SPEC, tmp_path / "mt" / "0" / "items", tmp_path / "hf", vocab=None, progress=False)
  finally:
    os.umask(old)
  modes = {(p.is_dir(), p.stat().st_mode & 0o777) for p in tmp_path.rglob("*")}
  assert modes == {(True, 0o750), (False, 0o640)}


# ---------------------------------------------------------------------------------------- signals
def test_sigterm_during_a_conversion_writes_nothing(tmp_path, capsys, inputs, monkeypatch):
  original, calls = ParamsWriter.add, []

  def add_then_sigterm(self, path, x):
    original(self, path, x)
    calls.append(path)
    if len(calls) == 3:   # a real SIGTERM to this process, half way through the output
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(ParamsWriter, "add", add_then_sigterm)
  before = _snapshot(tmp_path)
  assert cli.main([*_from_hf(inputs / "hf", tmp_path / "out"), "--no-progress"]) == 128 + signal.SIGTERM
  assert "lwm-convert: terminated; no output written" in capsys.readouterr().err
  assert len(calls) == 3 and _snapshot(tmp_path) == before
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL   # the handler is back


# ------------------------------------------------------------------------------ through a subprocess
def _run_cli(argv):
  return subprocess.run([sys.executable, "-m", "lwm_plugin.convert", *argv, "--no-progress"], env=subprocess_env(), cwd=REPO,
                        capture_output=True, text=True, timeout=600, check=False)


def test_subprocess_crafted_bin_and_damaged_orbax_data(tmp_path, inputs):
  # The crafted stride segfaulted (rc 139) before the check; missing data files make Orbax log
  # asyncio tracebacks. As a user sees it: exit 2, one error line, no traceback, nothing written.
  hf = _bin_dir(tmp_path / "hf", _weights(), _huge_stride)
  step = shutil.copytree(inputs / "mt" / "0", tmp_path / "mt" / "0")
  for data in [d for d in (step / "items").rglob("d") if d.is_dir()]:
    shutil.rmtree(data)
  before = _snapshot(tmp_path)
  for argv, message in ((_from_hf(hf, tmp_path / "out"), f"tensor '{VICTIM}'"),
                        (_to_hf(step / "items", tmp_path / "out"), f"{step / 'items'}")):
    proc = _run_cli(argv)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "lwm-convert: error:" in proc.stderr and message in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert _snapshot(tmp_path) == before



def test_a_stranger_in_our_temporary_directory_name(tmp_path, capsys, inputs):
  # `out.partial-<our pid>` without our marker: not ours to remove, and in the way.
  stranger = tmp_path / f"out.partial-{os.getpid()}"
  stranger.mkdir()
  (stranger / "theirs.txt").write_text("keep")
  _probe(capsys, tmp_path, _from_hf(inputs / "hf", tmp_path / "out"), f"{stranger} exists and is not a leftover")


def test_disk_full_is_an_error_line_and_leaves_nothing(tmp_path, capsys, inputs, monkeypatch):
  def full(self, path, x):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.step_dir / "/".join(path)))
  monkeypatch.setattr(ParamsWriter, "add", full)
  _probe(capsys, tmp_path, _from_hf(inputs / "hf", tmp_path / "out"), "No space left on device",
         str(tmp_path / "out.partial-"))


def test_config_that_is_not_valid_yaml(tmp_path, capsys):
  (tmp_path / "bad.yml").write_text("steps: 2\nhardware: [cpu\n")
  argv = ["to-hf", "--config", str(tmp_path / "bad.yml"), "--checkpoint", str(tmp_path / "ckpt"),
          "--output", str(tmp_path / "out"), "--no-tokenizer"]
  _probe(capsys, tmp_path, argv, f"{tmp_path}/bad.yml:2: not valid YAML: ")
