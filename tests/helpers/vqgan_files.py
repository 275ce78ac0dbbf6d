"""Random VQGAN weights in either public layout, for tests (nothing is downloaded).

`write_random_vqgan(path, layout, config, seed)` writes a diffusers `VQModel` directory
(`layout="diffusers"`) or LWM's pickled params file (`layout="lwm"`) through
`lwm_plugin.vision.vqgan_weights`' writers (atomic files) and returns the flat params it wrote.
The weights are scaled so that activations stay O(1) through the whole network, the codebook has
the latents' scale (so encoding uses many codes) and decoded pixels mostly lie inside [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lwm_plugin.vision.vqgan_weights import VQGANConfig, name_table, write_diffusers, write_lwm

SMALL = VQGANConfig(block_channels=(32, 32, 64), num_res_blocks=1, z_channels=8, num_embeddings=64, embed_dim=8)
# 5 levels: 256x256 -> 16x16 codes as LWM's, 64 codes as the tiny vocabulary's, few channels (fast on CPU).
TINY_GRID = VQGANConfig(block_channels=(8, 8, 8, 8, 8), num_res_blocks=1, z_channels=8, num_embeddings=64, embed_dim=8,
                        norm_groups=4)


def random_params(config: VQGANConfig, seed: int = 0) -> dict[str, np.ndarray]:
  """Flat float32 params (our layout) with O(1) activations."""
  rng = np.random.default_rng(seed)
  params = {}
  for t in name_table(config):
    if t.kind == "kernel":
      fan_in = t.shape[0] * t.shape[1] * t.shape[2]
      scale = 0.3 if t.ours.startswith("decoder/conv_out") else 1.0
      x = rng.standard_normal(t.shape, np.float32) * np.float32(scale / np.sqrt(fan_in))
    elif t.ours.endswith("/scale"):
      x = rng.random(t.shape, np.float32) + np.float32(0.5)
    elif t.ours == "codebook/embedding":
      x = rng.standard_normal(t.shape, np.float32) * np.float32(0.5)
    else:
      x = rng.standard_normal(t.shape, np.float32) * np.float32(0.1)
    params[t.ours] = x
  return params


def write_random_vqgan(path: str | Path, layout: str = "diffusers", config: VQGANConfig = SMALL,
                       seed: int = 0) -> dict[str, np.ndarray]:
  """Random weights written to `path` (a directory for diffusers, a file for lwm); returns them."""
  params = random_params(config, seed)
  if layout == "diffusers":
    write_diffusers(Path(path), config, params)
  elif layout == "lwm":
    write_lwm(Path(path), config, params)
  else:
    raise ValueError(f"layout={layout!r}: expected 'diffusers' or 'lwm'")
  return params
