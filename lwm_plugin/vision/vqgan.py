"""LWM's VQGAN in JAX/Flax: pixels <-> integer codes, jit-compiled, batched, data-parallel.

The architecture is aMUSEd-256's VQ model, which LWM tokenizes every frame with (paper Sec. 4.1;
LWM's `lwm/vqgan.py`; diffusers' `VQModel` with `mid_block_add_attention=False`). With the
default `VQGANConfig`: channels 128 x (1, 2, 2, 4, 6), 2 res blocks per encoder level (3 per
decoder level), no attention, GroupNorm with 32 groups and eps 1e-6, SiLU, 64-dim latents, 8192
codes; 256x256 pixels -> 16x16 codes.
  encode: conv_in; per level: res blocks, then (all but the last level) a stride-2 3x3 conv after
          zero-padding one row and column at the bottom/right; mid: 2 res blocks; GroupNorm, SiLU,
          conv_out; quant_conv (1x1); the code is the nearest codebook vector (squared Euclidean
          distance, computed in float32, ties to the lowest index).
  decode: codebook lookup; post_quant_conv (1x1); the decoder reads the quantized latents; conv_in;
          mid; per level (deepest first): res blocks, then (all but the last) nearest 2x upsampling
          and a 3x3 conv (computed as four 2x2 convs, `_UpsampleConv`); GroupNorm, SiLU, conv_out;
          clipped to [-1, 1] as LWM does.
  A res block: GroupNorm, SiLU, conv3x3, GroupNorm, SiLU, conv3x3, plus the input (through a 1x1
  conv when the channel count changes).
Pixels are NHWC float in [-1, 1] (LWM: `uint8 / 127.5 - 1`); any H, W that are multiples of the
downsampling factor work (LWM uses 256x256).

`VQGANCodec` runs one jit-compiled program per padded batch shape on a 1-d `jax.sharding.Mesh`
over `devices` (default: all of this process's devices; the batch split across devices, parameters replicated; no pmap). A call's batch is
cut into chunks of `max_batch_per_device` x devices; a short chunk is padded to the next
power-of-two multiple of the device count, so a stream of calls compiles a handful of shapes.
Inputs are validated eagerly (shape, dtype, range), before anything is compiled or run.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lwm_plugin.vision.vqgan_weights import VQGANConfig, check_params, nest, read_weights

__all__ = ["VQGANCodec", "VQGANConfig", "VQGANModel", "load_vqgan"]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_EPS = 1e-6


def _conv(c_out: int, k: int, name: str, dtype, stride: int = 1, padding: Any = "SAME") -> nn.Conv:
  return nn.Conv(c_out, (k, k), strides=(stride, stride), padding=padding, dtype=dtype, param_dtype=dtype, name=name)


def _norm(groups: int, name: str, dtype) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=groups, epsilon=_EPS, dtype=dtype, param_dtype=dtype, use_fast_variance=False,
                      name=name)


class _ResBlock(nn.Module):
  c_out: int
  groups: int
  dtype: Any

  @nn.compact
  def __call__(self, x_BxHxWxC):
    h = nn.silu(_norm(self.groups, "norm1", self.dtype)(x_BxHxWxC))
    h = _conv(self.c_out, 3, "conv1", self.dtype)(h)
    h = nn.silu(_norm(self.groups, "norm2", self.dtype)(h))
    h = _conv(self.c_out, 3, "conv2", self.dtype)(h)
    if x_BxHxWxC.shape[-1] != self.c_out:
      x_BxHxWxC = _conv(self.c_out, 1, "shortcut", self.dtype)(x_BxHxWxC)
    return x_BxHxWxC + h


class _UpsampleConv(nn.Module):
  """Nearest 2x upsampling then a 3x3 conv (padding 1), computed without materialising the upsampled map.

  Output pixel (2i+a, 2j+b) of the conv reads upsampled rows 2i+a-1..2i+a+1, i.e. input rows
  {i-1, i} (a = 0: kernel rows 0 | 1+2) or {i, i+1} (a = 1: kernel rows 0+1 | 2), and likewise for
  columns: each of the 4 output phases is a 2x2 conv of the input with summed kernel taps, 16 taps per
  input pixel instead of 36 (2.25x fewer FLOPs; equal up to float rounding).
  """
  c_out: int
  dtype: Any

  @nn.compact
  def __call__(self, x_BxhxwxC):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, x_BxhxwxC.shape[-1], self.c_out), self.dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.c_out,), self.dtype)
    x = x_BxhxwxC.astype(self.dtype)
    rows = {0: (kernel[0], kernel[1] + kernel[2]), 1: (kernel[0] + kernel[1], kernel[2])}
    phases = []
    for a in (0, 1):
      k_rows = jnp.stack(rows[a])   # [2, 3, Cin, Cout]
      cols = {0: (k_rows[:, 0], k_rows[:, 1] + k_rows[:, 2]), 1: (k_rows[:, 0] + k_rows[:, 1], k_rows[:, 2])}
      for b in (0, 1):
        k_ab = jnp.stack(cols[b], axis=1)   # [2, 2, Cin, Cout]
        phases.append(jax.lax.conv_general_dilated(
            x, k_ab, (1, 1), ((1 - a, a), (1 - b, b)), dimension_numbers=("NHWC", "HWIO", "NHWC")))
    bsz, h, w, c = phases[0].shape
    y = jnp.stack(phases).reshape(2, 2, bsz, h, w, c).transpose(2, 3, 0, 4, 1, 5).reshape(bsz, 2 * h, 2 * w, c)
    return y + bias[None, None, None, :]


class _Level(nn.Module):
  """One resolution level: res blocks, then a 2x down- or upsampling step unless it is the last level."""
  c_out: int
  num_blocks: int
  resample: str   # "down", "up" or "none"
  groups: int
  dtype: Any

  @nn.compact
  def __call__(self, h):
    for j in range(self.num_blocks):
      h = _ResBlock(self.c_out, self.groups, self.dtype, name=f"res_{j}")(h)
    if self.resample == "down":
      h = jnp.pad(h, ((0, 0), (0, 1), (0, 1), (0, 0)))
      h = _conv(self.c_out, 3, "downsample", self.dtype, stride=2, padding="VALID")(h)
    elif self.resample == "up":
      h = _UpsampleConv(self.c_out, self.dtype, name="upsample")(h)
    return h


class _Mid(nn.Module):
  groups: int
  dtype: Any

  @nn.compact
  def __call__(self, h):
    for k in range(2):
      h = _ResBlock(h.shape[-1], self.groups, self.dtype, name=f"res_{k}")(h)
    return h


class _Encoder(nn.Module):
  config: VQGANConfig
  dtype: Any

  @nn.compact
  def __call__(self, x_BxHxWxC):
    cfg, dt = self.config, self.dtype
    levels = len(cfg.block_channels)
    h = _conv(cfg.block_channels[0], 3, "conv_in", dt)(x_BxHxWxC)
    for i, c in enumerate(cfg.block_channels):
      h = _Level(c, cfg.num_res_blocks, "down" if i < levels - 1 else "none", cfg.norm_groups, dt, name=f"down_{i}")(h)
    h = _Mid(cfg.norm_groups, dt, name="mid")(h)
    h = nn.silu(_norm(cfg.norm_groups, "norm_out", dt)(h))
    return _conv(cfg.z_channels, 3, "conv_out", dt)(h)


class _Decoder(nn.Module):
  config: VQGANConfig
  dtype: Any

  @nn.compact
  def __call__(self, z_BxhxwxZ):
    cfg, dt = self.config, self.dtype
    rev = cfg.block_channels[::-1]
    h = _conv(rev[0], 3, "conv_in", dt)(z_BxhxwxZ)
    h = _Mid(cfg.norm_groups, dt, name="mid")(h)
    for i, c in enumerate(rev):
      h = _Level(c, cfg.num_res_blocks + 1, "up" if i < len(rev) - 1 else "none", cfg.norm_groups, dt,
                 name=f"up_{i}")(h)
    h = nn.silu(_norm(cfg.norm_groups, "norm_out", dt)(h))
    return _conv(cfg.channels, 3, "conv_out", dt)(h)


class _Codebook(nn.Module):
  """The codebook [N, D], kept in float32 in every mode (nearest-vector search is precision-sensitive)."""
  num_embeddings: int
  embed_dim: int

  def setup(self):
    self.embedding = self.param("embedding", nn.initializers.normal(1.0), (self.num_embeddings, self.embed_dim),
                                jnp.float32)

  def nearest(self, z_BxhxwxD):
    z_NxD = z_BxhxwxD.reshape(-1, self.embed_dim).astype(jnp.float32)
    e_VxD = self.embedding
    dots_NxV = jnp.dot(z_NxD, e_VxD.T, precision=jax.lax.Precision.HIGHEST)
    dist_NxV = (jnp.sum(z_NxD ** 2, axis=1, keepdims=True) - 2.0 * dots_NxV
                + jnp.sum(e_VxD ** 2, axis=1)[None, :])
    return jnp.argmin(dist_NxV, axis=1).astype(jnp.int32).reshape(z_BxhxwxD.shape[:-1])

  def lookup(self, codes_Bxhxw):
    return jnp.take(self.embedding, codes_Bxhxw, axis=0)


class VQGANModel(nn.Module):
  """The Flax VQ model; parameter paths are `vqgan_weights.name_table(config)`'s `ours` names."""
  config: VQGANConfig
  dtype: Any = jnp.float32

  def setup(self):
    cfg = self.config
    self.encoder = _Encoder(cfg, self.dtype)
    self.quant_conv = _conv(cfg.embed_dim, 1, "quant_conv", self.dtype)
    self.codebook = _Codebook(cfg.num_embeddings, cfg.embed_dim)
    self.post_quant_conv = _conv(cfg.z_channels, 1, "post_quant_conv", self.dtype)
    self.decoder = _Decoder(cfg, self.dtype)

  def encode(self, pixels_BxHxWxC):
    """Pixels in [-1, 1] -> int32 codes [B, H/f, W/f]."""
    z = self.quant_conv(self.encoder(pixels_BxHxWxC.astype(self.dtype)))
    return self.codebook.nearest(z)

  def decode(self, codes_Bxhxw):
    """Codes -> float32 pixels [B, h*f, w*f, C] clipped to [-1, 1]."""
    z = self.post_quant_conv(self.codebook.lookup(codes_Bxhxw).astype(self.dtype))
    return jnp.clip(self.decoder(z).astype(jnp.float32), -1.0, 1.0)

  def __call__(self, pixels_BxHxWxC):
    return self.decode(self.encode(pixels_BxHxWxC))


def _first_bad(mask: np.ndarray) -> tuple[int, ...]:
  return tuple(int(i) for i in np.argwhere(mask)[0])


class VQGANCodec:
  """Encode pixels to codes and decode codes to pixels with one VQGAN's weights, over `devices`."""

  def __init__(self, config: VQGANConfig, params: dict[str, np.ndarray], *, dtype: str = "float32",
               devices: Sequence[jax.Device] | None = None, max_batch_per_device: int = 8):
    if dtype not in _DTYPES:
      raise ValueError(f"dtype={dtype!r}: expected one of {sorted(_DTYPES)}")
    if not (isinstance(max_batch_per_device, int) and max_batch_per_device >= 1):
      raise ValueError(f"max_batch_per_device={max_batch_per_device!r}: expected a positive integer")
    check_params(config, params)
    self.config = config
    self.dtype = dtype
    self.devices = list(jax.local_devices() if devices is None else devices)
    if not self.devices:
      raise ValueError("devices is empty")
    self.max_batch = max_batch_per_device * len(self.devices)
    mesh = Mesh(np.array(self.devices), ("batch",))
    self._batch_sharding = NamedSharding(mesh, PartitionSpec("batch"))
    replicated = NamedSharding(mesh, PartitionSpec())
    compute = _DTYPES[dtype]
    cast = {k: np.asarray(v, np.float32 if k.startswith("codebook/") else compute) for k, v in params.items()}
    self._params = jax.device_put(nest(cast), replicated)
    model = VQGANModel(config, compute)
    self._encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=VQGANModel.encode),
                           in_shardings=(replicated, self._batch_sharding), out_shardings=self._batch_sharding)
    self._decode = jax.jit(lambda p, c: model.apply({"params": p}, c, method=VQGANModel.decode),
                           in_shardings=(replicated, self._batch_sharding), out_shardings=self._batch_sharding)

  def _bucket(self, n: int) -> int:
    """The padded size of a chunk of n <= max_batch items: the next power-of-two multiple of the device count."""
    per_device = math.ceil(n / len(self.devices))
    return min(len(self.devices) * (1 << (per_device - 1).bit_length()), self.max_batch)

  def _run(self, fn, x: np.ndarray, out_shape: tuple[int, ...], out_dtype) -> np.ndarray:
    """`fn` over `x` in padded chunks; every chunk is dispatched before the first result is fetched."""
    pending = []
    for start in range(0, x.shape[0], self.max_batch):
      chunk = x[start:start + self.max_batch]
      n, padded = chunk.shape[0], self._bucket(chunk.shape[0])
      if padded > n:
        chunk = np.concatenate([chunk, np.zeros((padded - n,) + chunk.shape[1:], chunk.dtype)])
      pending.append((fn(self._params, jax.device_put(chunk, self._batch_sharding)), n))
    if not pending:
      return np.zeros((0,) + out_shape, out_dtype)
    return np.concatenate([np.asarray(out)[:n] for out, n in pending]).astype(out_dtype, copy=False)

  def encode(self, pixels_BxHxWx3: np.ndarray) -> np.ndarray:
    """Float pixels in [-1, 1], [B, H, W, C] (H, W multiples of the downsampling factor; LWM: 256) ->
    int32 codes [B, H/f, W/f] (LWM: [B, 16, 16])."""
    x = pixels_BxHxWx3
    f, c = self.config.downsample_factor, self.config.channels
    if not isinstance(x, np.ndarray):
      raise TypeError(f"pixels must be a numpy array, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[3] != c or x.shape[1] % f or x.shape[2] % f or min(x.shape[1:3]) == 0:
      raise ValueError(f"pixels shape {x.shape}: expected [B, H, W, {c}] with H and W positive multiples of {f} "
                       f"(LWM: [B, 256, 256, 3])")
    if not np.issubdtype(x.dtype, np.floating):
      raise ValueError(f"pixels dtype {x.dtype}: expected floats in [-1, 1] (LWM: uint8 / 127.5 - 1)")
    x = np.asarray(x, np.float32)
    bad = ~((x >= -1.0) & (x <= 1.0))
    if bad.any():
      where = _first_bad(bad)
      raise ValueError(f"pixels{list(where)} = {x[where]}: pixels must be finite and in [-1, 1] "
                       "(LWM: uint8 / 127.5 - 1)")
    return self._run(self._encode, x, (x.shape[1] // f, x.shape[2] // f), np.int32)

  def decode(self, codes_Bx16x16: np.ndarray) -> np.ndarray:
    """Integer codes in [0, num_embeddings), [B, h, w] -> float32 pixels [B, h*f, w*f, C] in [-1, 1]."""
    codes = codes_Bx16x16
    f, n = self.config.downsample_factor, self.config.num_embeddings
    if not isinstance(codes, np.ndarray):
      raise TypeError(f"codes must be a numpy array, got {type(codes).__name__}")
    if codes.ndim != 3 or min(codes.shape[1:]) == 0:
      raise ValueError(f"codes shape {codes.shape}: expected [B, h, w] (LWM: [B, 16, 16])")
    if not np.issubdtype(codes.dtype, np.integer):
      raise ValueError(f"codes dtype {codes.dtype}: expected integers in [0, {n})")
    bad = (codes < 0) | (codes >= n)
    if bad.any():
      where = _first_bad(bad)
      raise ValueError(f"codes{list(where)} = {int(codes[where])}: codes must be in [0, {n})")
    codes = codes.astype(np.int32)
    return self._run(self._decode, codes, (codes.shape[1] * f, codes.shape[2] * f, self.config.channels), np.float32)


def load_vqgan(path, *, dtype: str = "float32", devices: Sequence[jax.Device] | None = None,
               max_batch_per_device: int = 8) -> VQGANCodec:
  """A codec over `path`: a diffusers VQModel directory (aMUSEd's `vqvae/`) or LWM's pickled `vqgan` file.

  Raises `vqgan_weights.VQGANWeightsError` (a ValueError) naming the file and tensor on any mismatch.
  """
  config, params = read_weights(path)
  return VQGANCodec(config, params, dtype=dtype, devices=devices, max_batch_per_device=max_batch_per_device)
