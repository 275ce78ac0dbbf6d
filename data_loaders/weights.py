"""LWM's loss weighting: raw per-token weights -> final weights, one definition for numpy and JAX.

The loader emits raw weights `u` (`data_loaders.packing.example_features`): with
`weighting="example"`, `u = 1 / n_im` on the loss tokens of example i and modality m, so each
(example, modality) sums to 1 and `U_m = sum(u * [modality m])` is N_m, the number of examples
with any modality-m loss token; with `"token"`, `u = 1` on every loss token. The final weight of a
loss token is `coef_m * u` with

  example:  coef_m = lambda_m / N_m    (N_m = round(U_m); 0 when N_m = 0)
  token:    coef   = 1 / (U_text + U_vision)

so `sum_t w_t loss_t` is unpacked padded training whatever the packing (example), or the plain
token mean (token). The functions take the array namespace `xp` (numpy, or `jax.numpy`): the host
normaliser (`data_loaders.packing.normalize_weights`) and the on-device loss
(`lwm_plugin.losses.weighted`) share this one definition; a test checks the two agree.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any

MODALITIES = ("text", "vision")
WEIGHTINGS = ("example", "token")


@dataclasses.dataclass(frozen=True)
class LossWeighting:
  """How loss tokens are weighed (hashable: a static argument under jit)."""
  weighting: str = "example"
  text_weight: float = 0.5
  vision_weight: float = 0.5

  def __post_init__(self):
    if self.weighting not in WEIGHTINGS:
      raise ValueError(f"weighting={self.weighting!r}; expected one of {WEIGHTINGS}")
    if min(self.text_weight, self.vision_weight) < 0:
      raise ValueError(f"modality weights must be >= 0, got text={self.text_weight}, vision={self.vision_weight}")

  @classmethod
  def from_settings(cls, cfg: Any) -> LossWeighting:
    """From the `lwm_loss_weighting`, `lwm_text_loss_weight`, `lwm_vision_loss_weight` keys of a config."""
    return cls(cfg.lwm_loss_weighting, float(cfg.lwm_text_loss_weight), float(cfg.lwm_vision_loss_weight))


def modality_coefficients(u_text: Any, u_vision: Any, weighting: LossWeighting, xp: ModuleType) -> tuple[Any, Any]:
  """(coef_text, coef_vision) from the raw weight sums U_m: a token's final weight is coef_m(t) * u_t."""
  if weighting.weighting == "token":
    total = u_text + u_vision
    coef = xp.where(total > 0, 1.0 / xp.maximum(total, 1e-30), 0.0)
    return coef, coef
  coefs = []
  for lam, u in ((weighting.text_weight, u_text), (weighting.vision_weight, u_vision)):
    n = xp.round(u)
    coefs.append(xp.where(n > 0, lam / xp.maximum(n, 1.0), 0.0))
  return coefs[0], coefs[1]


def final_weights(u: Any, vision: Any, u_text: Any, u_vision: Any, weighting: LossWeighting, xp: ModuleType) -> Any:
  """Final per-token weights (u's shape) from raw weights `u`, the vision mask and the sums U_text, U_vision."""
  coef_text, coef_vision = modality_coefficients(u_text, u_vision, weighting, xp)
  return u * xp.where(vision.astype(bool), coef_vision, coef_text)
