"""LWM's VQGAN weights in both public layouts, checked tensor by tensor against one name table.

The architecture (aMUSEd-256's VQ model, which LWM uses; `VQGANConfig`) is described by a few
hyper-parameters; `name_table(config)` lists every tensor once with its name in each layout:
  * ours: the Flax parameter path of `lwm_plugin.vision.vqgan` ("encoder/down_0/res_0/conv1/kernel"),
    convolution kernels [kh, kw, in, out];
  * diffusers: a `VQModel` state-dict name ("encoder.down_blocks.0.resnets.0.conv1.weight"), kernels
    [out, in, kh, kw]; the directory holds `config.json` + `diffusion_pytorch_model.safetensors`
    (aMUSEd ships it as `vqvae/`);
  * lwm: the path in LWM's released `vqgan` file, a pickled Flax params tree of LWM's `VQGANModel`
    (Flax auto-names: "encoder/DownsamplingBlock_0/ResnetBlock_0/Conv_0/kernel"); LWM's decoder
    creates its up blocks from the deepest level up, so its `UpsamplingBlock_i` is diffusers'
    `up_blocks.i`. The file has no config: it is read from the tensor shapes (norm groups are
    LWM's fixed 32).
A reader maps a file's tensors through the table: every tensor of the file is used exactly once,
with the table's shape; missing, extra and misshapen tensors are named in the error.

LWM's file is a pickle, so it is read with a restricted unpickler that resolves only the globals
a params tree needs (plain containers, flax's FrozenDict as a dict, numpy arrays and dtypes,
ml_dtypes' bfloat16, a jax Array's numpy reconstruction) and refuses every other global by name
before it could run (the discipline of `conversion.torch_bin`).

Writers for both layouts (atomic files) make the tests' weights and convert between layouts.
"""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
from collections import OrderedDict
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from data_loaders.atomic_file import atomic_path

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
LWM_NORM_GROUPS = 32   # LWM's `nn.GroupNorm()` default; its file cannot say otherwise


class VQGANWeightsError(ValueError):
  """A weights file or directory that is not a VQGAN of the supported architecture."""


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
  """Architecture of the VQ model; defaults are aMUSEd-256's / LWM's (256x256 pixels -> 16x16 codes)."""
  channels: int = 3                                       # pixel channels in and out
  block_channels: tuple[int, ...] = (128, 256, 256, 512, 768)   # 128 x (1, 2, 2, 4, 6), one per level
  num_res_blocks: int = 2                                 # per encoder level (decoder levels have one more)
  z_channels: int = 64                                    # encoder output / decoder input channels
  num_embeddings: int = 8192                              # codebook size
  embed_dim: int = 64                                     # codebook vector size
  norm_groups: int = 32                                   # GroupNorm groups (eps 1e-6)

  def __post_init__(self):
    for field in ("channels", "num_res_blocks", "z_channels", "num_embeddings", "embed_dim", "norm_groups"):
      value = getattr(self, field)
      if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise VQGANWeightsError(f"VQGANConfig.{field} must be a positive integer, got {value!r}")
    if not (isinstance(self.block_channels, tuple) and self.block_channels
            and all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in self.block_channels)):
      raise VQGANWeightsError(f"VQGANConfig.block_channels must be a tuple of positive integers, "
                              f"got {self.block_channels!r}")
    for c in self.block_channels:
      if c % self.norm_groups:
        raise VQGANWeightsError(f"VQGANConfig: {c} channels are not divisible into {self.norm_groups} norm groups")

  @property
  def downsample_factor(self) -> int:
    """Pixels per code along each side (16 for the default: 256x256 -> 16x16)."""
    return 2 ** (len(self.block_channels) - 1)


@dataclasses.dataclass(frozen=True)
class TensorName:
  """One tensor: its name in each layout, its shape in ours, and how the layouts store it."""
  ours: str
  diffusers: str
  lwm: str
  shape: tuple[int, ...]
  kind: str   # "kernel" (ours [kh, kw, in, out] <-> diffusers [out, in, kh, kw]) or "plain"

  def to_diffusers(self, x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)) if self.kind == "kernel" else x

  def from_diffusers(self, x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(2, 3, 1, 0)) if self.kind == "kernel" else x

  def diffusers_shape(self) -> tuple[int, ...]:
    return tuple(self.shape[i] for i in (3, 2, 0, 1)) if self.kind == "kernel" else self.shape


def name_table(config: VQGANConfig) -> list[TensorName]:
  """Every tensor of the model, in a fixed order (encoder, quantizer, decoder)."""
  table: list[TensorName] = []

  def conv(ours, diffusers, lwm, k, c_in, c_out):
    table.append(TensorName(f"{ours}/kernel", f"{diffusers}.weight", f"{lwm}/kernel", (k, k, c_in, c_out), "kernel"))
    table.append(TensorName(f"{ours}/bias", f"{diffusers}.bias", f"{lwm}/bias", (c_out,), "plain"))

  def norm(ours, diffusers, lwm, c):
    table.append(TensorName(f"{ours}/scale", f"{diffusers}.weight", f"{lwm}/scale", (c,), "plain"))
    table.append(TensorName(f"{ours}/bias", f"{diffusers}.bias", f"{lwm}/bias", (c,), "plain"))

  def resnet(ours, diffusers, lwm, c_in, c_out):
    norm(f"{ours}/norm1", f"{diffusers}.norm1", f"{lwm}/GroupNorm_0", c_in)
    conv(f"{ours}/conv1", f"{diffusers}.conv1", f"{lwm}/Conv_0", 3, c_in, c_out)
    norm(f"{ours}/norm2", f"{diffusers}.norm2", f"{lwm}/GroupNorm_1", c_out)
    conv(f"{ours}/conv2", f"{diffusers}.conv2", f"{lwm}/Conv_1", 3, c_out, c_out)
    if c_in != c_out:
      conv(f"{ours}/shortcut", f"{diffusers}.conv_shortcut", f"{lwm}/Conv_2", 1, c_in, c_out)

  def mid(part, c):
    for k in range(2):
      resnet(f"{part}/mid/res_{k}", f"{part}.mid_block.resnets.{k}", f"{part}/MidBlock_0/ResnetBlock_{k}", c, c)

  ch, levels = config.block_channels, len(config.block_channels)
  conv("encoder/conv_in", "encoder.conv_in", "encoder/Conv_0", 3, config.channels, ch[0])
  for i in range(levels):
    c_in = ch[max(i - 1, 0)]
    for j in range(config.num_res_blocks):
      resnet(f"encoder/down_{i}/res_{j}", f"encoder.down_blocks.{i}.resnets.{j}",
             f"encoder/DownsamplingBlock_{i}/ResnetBlock_{j}", c_in if j == 0 else ch[i], ch[i])
    if i < levels - 1:
      conv(f"encoder/down_{i}/downsample", f"encoder.down_blocks.{i}.downsamplers.0.conv",
           f"encoder/DownsamplingBlock_{i}/Downsample_0/Conv_0", 3, ch[i], ch[i])
  mid("encoder", ch[-1])
  norm("encoder/norm_out", "encoder.conv_norm_out", "encoder/GroupNorm_0", ch[-1])
  conv("encoder/conv_out", "encoder.conv_out", "encoder/Conv_1", 3, ch[-1], config.z_channels)

  conv("quant_conv", "quant_conv", "quant_conv", 1, config.z_channels, config.embed_dim)
  table.append(TensorName("codebook/embedding", "quantize.embedding.weight", "quantize/embeddings",
                          (config.num_embeddings, config.embed_dim), "plain"))
  conv("post_quant_conv", "post_quant_conv", "post_quant_conv", 1, config.embed_dim, config.z_channels)

  rev = ch[::-1]
  conv("decoder/conv_in", "decoder.conv_in", "decoder/Conv_0", 3, config.z_channels, rev[0])
  mid("decoder", rev[0])
  for i in range(levels):
    c_in = rev[max(i - 1, 0)]
    for j in range(config.num_res_blocks + 1):
      resnet(f"decoder/up_{i}/res_{j}", f"decoder.up_blocks.{i}.resnets.{j}",
             f"decoder/UpsamplingBlock_{i}/ResnetBlock_{j}", c_in if j == 0 else rev[i], rev[i])
    if i < levels - 1:
      conv(f"decoder/up_{i}/upsample", f"decoder.up_blocks.{i}.upsamplers.0.conv",
           f"decoder/UpsamplingBlock_{i}/Upsample_0/Conv_0", 3, rev[i], rev[i])
  norm("decoder/norm_out", "decoder.conv_norm_out", "decoder/GroupNorm_0", rev[-1])
  conv("decoder/conv_out", "decoder.conv_out", "decoder/Conv_1", 3, rev[-1], config.channels)
  return table


def _take(source: str, layout: str, tensors: dict[str, np.ndarray], config: VQGANConfig) -> dict[str, np.ndarray]:
  """Our float32 params (flat, by `ours` path) from a file's tensors named in `layout`; each used once."""
  table = name_table(config)
  wanted = {getattr(t, layout): t for t in table}
  missing = sorted(set(wanted) - set(tensors))
  extra = sorted(set(tensors) - set(wanted))
  if missing or extra:
    raise VQGANWeightsError(f"{source}: the tensors do not match a {layout} VQGAN with {config}: "
                            f"missing {_some(missing)}; unexpected {_some(extra)}")
  params = {}
  for name, t in wanted.items():
    x = tensors[name]
    want = t.diffusers_shape() if layout == "diffusers" else t.shape
    if tuple(x.shape) != want:
      raise VQGANWeightsError(f"{source}: tensor {name!r} has shape {tuple(x.shape)}, expected {want}")
    if x.dtype not in (np.float32, np.float16, np.float64, ml_dtypes.bfloat16):
      raise VQGANWeightsError(f"{source}: tensor {name!r} has dtype {x.dtype}, expected a float type")
    x = np.asarray(x, np.float32)
    if not np.isfinite(x).all():
      raise VQGANWeightsError(f"{source}: tensor {name!r} holds non-finite values")
    params[t.ours] = t.from_diffusers(x) if layout == "diffusers" else x
  return params


def _some(names: list[str], limit: int = 8) -> str:
  if not names:
    return "none"
  more = f" and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(repr(n) for n in names[:limit]) + more


# ---- diffusers VQModel directory -------------------------------------------------------------------------

# VQModel.__init__'s defaults (diffusers 0.42): a key missing from config.json means this value.
_DIFFUSERS_DEFAULTS = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D"], "block_out_channels": [64], "layers_per_block": 1, "act_fn": "silu",
    "latent_channels": 3, "sample_size": 32, "num_vq_embeddings": 256, "norm_num_groups": 32, "vq_embed_dim": None,
    "scaling_factor": 0.18215, "norm_type": "group", "mid_block_add_attention": True,
    "lookup_from_codebook": False, "force_upcast": False,
}
# Keys that do not change the encode/decode maths of a VQ model.
_IGNORED_KEYS = ("sample_size", "scaling_factor", "lookup_from_codebook", "force_upcast")


def config_from_diffusers(cfg: dict, source: str) -> VQGANConfig:
  """VQGANConfig from a VQModel `config.json`; refuses every unsupported architecture value by key."""
  if not isinstance(cfg, dict):
    raise VQGANWeightsError(f"{source}: config.json is not a JSON object")
  if cfg.get("_class_name", "VQModel") != "VQModel":
    raise VQGANWeightsError(f"{source}: _class_name is {cfg['_class_name']!r}, expected 'VQModel'")
  unknown = sorted(k for k in cfg if not k.startswith("_") and k not in _DIFFUSERS_DEFAULTS)
  if unknown:
    raise VQGANWeightsError(f"{source}: unsupported VQModel config keys {unknown}")
  c = {**_DIFFUSERS_DEFAULTS, **{k: v for k, v in cfg.items() if not k.startswith("_")}}

  def refuse(key, why):
    raise VQGANWeightsError(f"{source}: {key}={c[key]!r} is not supported ({why})")

  for key, want in (("act_fn", "silu"), ("norm_type", "group"), ("mid_block_add_attention", False)):
    if c[key] != want:
      refuse(key, f"LWM's VQGAN has {want!r}")
  if c["out_channels"] != c["in_channels"]:
    refuse("out_channels", f"must equal in_channels={c['in_channels']!r}")
  blocks = c["block_out_channels"]
  if not (isinstance(blocks, list) and blocks and all(isinstance(b, int) for b in blocks)):
    refuse("block_out_channels", "a non-empty list of integers")
  for key, want in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
    if not isinstance(c[key], list) or len(c[key]) != len(blocks) or any(t != want for t in c[key]):
      refuse(key, f"{len(blocks)} x {want!r}, one per block_out_channels entry, no attention blocks")
  embed_dim = c["latent_channels"] if c["vq_embed_dim"] is None else c["vq_embed_dim"]
  try:
    return VQGANConfig(channels=c["in_channels"], block_channels=tuple(blocks), num_res_blocks=c["layers_per_block"],
                       z_channels=c["latent_channels"], num_embeddings=c["num_vq_embeddings"], embed_dim=embed_dim,
                       norm_groups=c["norm_num_groups"])
  except VQGANWeightsError as e:
    raise VQGANWeightsError(f"{source}: {e}") from e


def diffusers_config(config: VQGANConfig) -> dict:
  """The VQModel `config.json` of `config` (LWM's VQGAN decodes from codebook entries)."""
  levels = len(config.block_channels)
  return {
      "_class_name": "VQModel", "in_channels": config.channels, "out_channels": config.channels,
      "down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels,
      "block_out_channels": list(config.block_channels), "layers_per_block": config.num_res_blocks,
      "act_fn": "silu", "latent_channels": config.z_channels, "num_vq_embeddings": config.num_embeddings,
      "norm_num_groups": config.norm_groups, "vq_embed_dim": config.embed_dim, "norm_type": "group",
      "mid_block_add_attention": False, "lookup_from_codebook": True,
  }


def read_diffusers(directory: Path) -> tuple[VQGANConfig, dict[str, np.ndarray]]:
  """(config, our flat float32 params) of a diffusers VQModel directory."""
  directory = Path(directory)
  cfg_path, weights = directory / CONFIG_FILE, directory / WEIGHTS_FILE
  if not cfg_path.is_file():
    amused = (directory / "vqvae" / CONFIG_FILE).is_file()
    hint = " (for an aMUSEd download, pass its vqvae/ directory)" if amused else ""
    raise VQGANWeightsError(f"{directory}: no {CONFIG_FILE}; not a diffusers VQModel directory{hint}")
  try:
    cfg = json.loads(cfg_path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise VQGANWeightsError(f"{cfg_path}: not valid JSON ({e})") from e
  config = config_from_diffusers(cfg, str(cfg_path))
  if not weights.is_file():
    raise VQGANWeightsError(f"{directory}: no {WEIGHTS_FILE}")
  try:
    with safe_open(str(weights), framework="np") as f:
      tensors = {name: f.get_tensor(name) for name in f.keys()}
  except (SafetensorError, OSError, ValueError) as e:
    raise VQGANWeightsError(f"{weights}: cannot read safetensors ({type(e).__name__}: {e})") from e
  return config, _take(str(weights), "diffusers", tensors, config)


def write_diffusers(directory: Path, config: VQGANConfig, params: dict[str, np.ndarray]) -> None:
  """A diffusers VQModel directory (`config.json` + safetensors, float32) from our flat params."""
  directory = Path(directory)
  table = check_params(config, params)
  tensors = {t.diffusers: t.to_diffusers(np.asarray(params[t.ours], np.float32)) for t in table}
  with atomic_path(directory / WEIGHTS_FILE) as tmp:
    save_file(tensors, tmp, metadata={"format": "pt"})
  with atomic_path(directory / CONFIG_FILE) as tmp:
    Path(tmp).write_text(json.dumps(diffusers_config(config), indent=2) + "\n")


def nest(flat: dict) -> dict:
  """{"a/b/c": x} -> {"a": {"b": {"c": x}}} (a Flax params tree)."""
  tree: dict = {}
  for path, value in flat.items():
    *parents, leaf = path.split("/")
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def check_params(config: VQGANConfig, params: dict[str, np.ndarray]) -> list[TensorName]:
  """The name table, after checking that `params` (flat, our names) has exactly its names and shapes."""
  table = name_table(config)
  names = {t.ours for t in table}
  if set(params) != names:
    raise VQGANWeightsError(f"params do not match {config}: missing {_some(sorted(names - set(params)))}; "
                            f"unexpected {_some(sorted(set(params) - names))}")
  for t in table:
    if tuple(np.shape(params[t.ours])) != t.shape:
      raise VQGANWeightsError(f"param {t.ours!r} has shape {np.shape(params[t.ours])}, expected {t.shape}")
  return table


# ---- LWM's pickled Flax params tree -------------------------------------------------------------------------

def _frozen_dict(mapping):
  if not isinstance(mapping, dict):
    raise pickle.UnpicklingError(f"a FrozenDict of {type(mapping).__name__}, expected a dict")
  return dict(mapping)


class _NdarrayType:
  """Stands for `numpy.ndarray` in a pickle: only `_reconstruct` accepts it; calling it is refused."""


def _reconstruct(subtype, shape, dtype):
  # numpy pickles an array as an empty one of this form, then fills it with `ndarray.__setstate__` (BUILD),
  # which checks the data against the shape; anything else could allocate an arbitrary size here.
  if subtype is not _NdarrayType or shape != (0,):
    raise pickle.UnpicklingError(f"an array record ({subtype!r}, shape {shape!r}) that numpy does not write")
  return np.ndarray.__new__(np.ndarray, shape, dtype)


def _dtype(kind, align=False, copy=True):
  """`numpy.dtype` as numpy pickles it: a type code string (or ml_dtypes' bfloat16), then its BUILD state."""
  if not (isinstance(kind, str) or kind is ml_dtypes.bfloat16) or not isinstance(align, bool):
    raise pickle.UnpicklingError(f"a dtype record {kind!r} that numpy does not write")
  return np.dtype(kind, align=align, copy=copy)


def _jax_array(fun, args, arr_state, aval_state):
  """A jax Array pickles as its numpy value's reconstruction; kept as that numpy array."""
  if fun is not _reconstruct or not isinstance(aval_state, dict):
    raise pickle.UnpicklingError("a jax Array that is not a reconstructed numpy array")
  value = fun(*args)
  value.__setstate__(arr_state)
  return value


_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("flax.core.frozen_dict", "FrozenDict"): _frozen_dict,
    ("numpy", "ndarray"): _NdarrayType,
    ("numpy", "dtype"): _dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,    # numpy 1.x pickles
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,   # numpy 2.x pickles
    ("ml_dtypes", "bfloat16"): ml_dtypes.bfloat16,
    ("jax._src.array", "_reconstruct_array"): _jax_array,
}


class _ParamsUnpickler(pickle.Unpickler):
  """Resolves only what a pickled params tree of numpy arrays needs; refuses any other global by name."""

  def find_class(self, module, name):
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not part of a params tree of arrays)") from None

  def persistent_load(self, pid):
    raise pickle.UnpicklingError(f"refusing persistent id {pid!r} (not part of a params tree of arrays)")


def load_params_pickle(data: bytes, source: str) -> dict[str, np.ndarray]:
  """The flat {"a/b/c": array} of a pickled nested dict of numpy arrays (restricted unpickling)."""
  if not data.startswith(b"\x80"):
    raise VQGANWeightsError(f"{source}: not a pickle file (it does not start with a pickle protocol header)")
  try:
    tree = _ParamsUnpickler(io.BytesIO(data)).load()
  except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError, IndexError, KeyError,
          MemoryError, OverflowError) as e:
    raise VQGANWeightsError(f"{source}: not a plain pickled params tree ({type(e).__name__}: {e})") from e
  if not isinstance(tree, dict):
    raise VQGANWeightsError(f"{source}: the pickle holds a {type(tree).__name__}, expected a dict params tree")
  flat: dict[str, np.ndarray] = {}

  def walk(node, prefix):
    for key, value in node.items():
      if not isinstance(key, str) or "/" in key:
        raise VQGANWeightsError(f"{source}: params tree key {prefix}{key!r} is not a plain name")
      if isinstance(value, dict):
        walk(value, f"{prefix}{key}/")
      elif isinstance(value, np.ndarray):
        flat[prefix + key] = value
      else:
        raise VQGANWeightsError(f"{source}: {prefix}{key} is a {type(value).__name__}, expected an array or dict")

  walk(tree, "")
  return flat


def _lwm_config(flat: dict[str, np.ndarray], source: str) -> VQGANConfig:
  """The architecture of an LWM params tree, read from its shapes (the file has no config)."""
  def shape(name, rank):
    if name not in flat or flat[name].ndim != rank:
      raise VQGANWeightsError(f"{source}: not an LWM VQGAN params tree (no {rank}-d tensor {name!r})")
    return flat[name].shape

  levels = 0
  while any(k.startswith(f"encoder/DownsamplingBlock_{levels}/") for k in flat):
    levels += 1
  res_blocks = 0
  while any(k.startswith(f"encoder/DownsamplingBlock_0/ResnetBlock_{res_blocks}/") for k in flat):
    res_blocks += 1
  if levels == 0 or res_blocks == 0:
    raise VQGANWeightsError(f"{source}: not an LWM VQGAN params tree (no encoder/DownsamplingBlock_0/ResnetBlock_0)")
  blocks = tuple(shape(f"encoder/DownsamplingBlock_{i}/ResnetBlock_0/Conv_0/kernel", 4)[3] for i in range(levels))
  num_embeddings, embed_dim = shape("quantize/embeddings", 2)
  try:
    return VQGANConfig(channels=shape("encoder/Conv_0/kernel", 4)[2], block_channels=blocks, num_res_blocks=res_blocks,
                       z_channels=shape("encoder/Conv_1/kernel", 4)[3], num_embeddings=num_embeddings,
                       embed_dim=embed_dim, norm_groups=LWM_NORM_GROUPS)
  except VQGANWeightsError as e:
    raise VQGANWeightsError(f"{source}: {e}") from e


def read_lwm(path: Path) -> tuple[VQGANConfig, dict[str, np.ndarray]]:
  """(config, our flat float32 params) of LWM's pickled `vqgan` params file."""
  flat = load_params_pickle(Path(path).read_bytes(), str(path))
  config = _lwm_config(flat, str(path))
  return config, _take(str(path), "lwm", flat, config)


def write_lwm(path: Path, config: VQGANConfig, params: dict[str, np.ndarray]) -> None:
  """LWM's layout: a pickle of the nested params dict of LWM's Flax `VQGANModel` (plain dicts, float32)."""
  if config.norm_groups != LWM_NORM_GROUPS:
    raise VQGANWeightsError(f"LWM's layout fixes {LWM_NORM_GROUPS} norm groups; this model has {config.norm_groups}")
  tree = nest({t.lwm: np.asarray(params[t.ours], np.float32) for t in check_params(config, params)})
  with atomic_path(path) as tmp:
    Path(tmp).write_bytes(pickle.dumps(tree, protocol=4))


def read_weights(path: str | Path) -> tuple[VQGANConfig, dict[str, np.ndarray]]:
  """(config, our flat float32 params) of a diffusers VQModel directory or an LWM `vqgan` pickle file."""
  path = Path(path)
  if path.is_dir():
    return read_diffusers(path)
  if path.is_file():
    return read_lwm(path)
  raise VQGANWeightsError(f"{path}: no such file or directory (expected a diffusers VQModel directory "
                          "or LWM's vqgan params file)")
