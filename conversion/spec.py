"""The model a conversion is about: dimensions from a resolved MaxText config, and its HF config.

`ModelSpec.from_config` reads a resolved config (our `LWMConfig`) and refuses settings that change
the weights' layout or the model's maths in ways the Hugging Face `LlamaForCausalLM` cannot
express (another decoder block, interleaved RoPE, fused projections, q/k norms...), naming the key.
`hf_config` writes the `config.json` transformers 5.x reads (`rope_parameters`) plus the legacy
`rope_theta` for 4.x readers; `check_hf_config` compares a Hugging Face config with the spec.

Shapes legend: E embed, H query heads, K kv heads, D head dim, M mlp dim, L layers, V vocab.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class ConversionError(ValueError):
  """A conversion cannot proceed; the message names the tensor, file, key or value at fault."""


# (config key, the value a llama2 model needs, why)
_REQUIRED = (
    ("decoder_block", "llama2", "the converters handle the LLaMA-2 block only"),
    ("rope_type", "default", "only MaxText's default rotate-half RoPE has the Hugging Face layout"),
    ("fused_qkv", False, "fused q/k/v kernels have no Hugging Face Llama counterpart"),
    ("fused_mlp", False, "a fused MLP kernel has no Hugging Face Llama counterpart"),
    ("use_qk_norm", False, "Llama has no q/k norms"),
    ("attention_bias", False, "Llama has no attention biases"),
    ("mlp_bias", False, "Llama has no MLP biases"),
    ("rope_min_timescale", 1, "Hugging Face RoPE frequencies are theta^(-2i/D), i.e. min timescale 1"),
    ("final_logits_soft_cap", None, "Llama has no logit soft cap"),
)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Dimensions and the few numbers `config.json` needs."""

  E: int
  H: int
  K: int
  D: int
  M: int
  L: int
  V: int
  norm_eps: float
  rope_theta: float
  max_positions: int
  tie_embeddings: bool
  scan_layers: bool
  rope_linear_factor: float = 1.0

  @classmethod
  def from_config(cls, config: Any) -> "ModelSpec":
    """From a resolved MaxText/LWM config; raises ConversionError for unsupported settings."""
    for key, want, why in _REQUIRED:
      have = getattr(config, key, want)
      have = getattr(have, "value", have)   # MaxText enums (DecoderBlockType, ...)
      if have != want:
        raise ConversionError(f"config key {key}={have!r} is not supported ({key} must be {want!r}: {why})")
    if list(config.mlp_activations) != ["silu", "linear"]:
      raise ConversionError(f"config key mlp_activations={list(config.mlp_activations)} is not supported "
                            "(Llama's MLP is ['silu', 'linear'])")
    if config.scan_layers and config.param_scan_axis != 1:
      raise ConversionError(f"config key param_scan_axis={config.param_scan_axis} is not supported (must be 1)")
    if config.logits_via_embedding and getattr(config, "normalize_embedding_logits", False):
      raise ConversionError("config keys logits_via_embedding=true with normalize_embedding_logits=true divide the "
                            "logits by sqrt(emb_dim), which Llama does not; set normalize_embedding_logits: false")
    partial = getattr(config, "partial_rotary_factor", None)
    if partial not in (None, 1.0):
      raise ConversionError(f"config key partial_rotary_factor={partial} is not supported (must be 1.0)")
    return cls(E=config.emb_dim, H=config.num_query_heads, K=config.num_kv_heads, D=config.head_dim,
               M=config.mlp_dim, L=config.num_decoder_layers, V=config.vocab_size,
               norm_eps=float(config.normalization_layer_epsilon), rope_theta=float(config.rope_max_timescale),
               max_positions=int(config.max_target_length), tie_embeddings=bool(config.logits_via_embedding),
               scan_layers=bool(config.scan_layers),
               rope_linear_factor=float(getattr(config, "rope_linear_scaling_factor", 1.0)))

  def with_(self, **changes: Any) -> "ModelSpec":
    return dataclasses.replace(self, **changes)

  def rope_parameters(self) -> dict[str, Any]:
    if self.rope_linear_factor != 1.0:
      return {"rope_type": "linear", "factor": self.rope_linear_factor, "rope_theta": self.rope_theta}
    return {"rope_type": "default", "rope_theta": self.rope_theta}

  def hf_config(self, *, dtype: str, bos_token_id: int | None, eos_token_id: int | None,
                pad_token_id: int | None) -> dict[str, Any]:
    """The `config.json` of the equivalent `LlamaForCausalLM`, as transformers 5.23 writes it."""
    from transformers import LlamaConfig  # pylint: disable=import-outside-toplevel  (slow import)

    config = LlamaConfig(
        vocab_size=self.V, hidden_size=self.E, intermediate_size=self.M, num_hidden_layers=self.L,
        num_attention_heads=self.H, num_key_value_heads=self.K, head_dim=self.D, hidden_act="silu",
        max_position_embeddings=self.max_positions, rms_norm_eps=self.norm_eps,
        rope_parameters=self.rope_parameters(), tie_word_embeddings=self.tie_embeddings,
        attention_bias=False, mlp_bias=False, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
        pad_token_id=pad_token_id, dtype=dtype, architectures=["LlamaForCausalLM"])
    out = config.to_dict()
    out["rope_theta"] = self.rope_theta  # transformers 4.x reads this key, not rope_parameters
    if self.rope_linear_factor != 1.0:
      out["rope_scaling"] = {"type": "linear", "rope_type": "linear", "factor": self.rope_linear_factor}
    return out


def read_json_object(path: Path, what: str) -> dict[str, Any]:
  """The JSON object in an existing file `path`, or a ConversionError naming the file (`what` it should be)."""
  try:
    value = json.loads(Path(path).read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:
    raise ConversionError(f"{path}: unreadable {what} ({e})") from e
  if not isinstance(value, dict):
    raise ConversionError(f"{path}: expected a JSON object ({what}), got {type(value).__name__}")
  return value


def read_hf_config(hf_dir: Path) -> dict[str, Any]:
  path = Path(hf_dir) / "config.json"
  if not path.is_file():
    raise ConversionError(f"{hf_dir}: no config.json (expected a Hugging Face model directory)")
  return read_json_object(path, "Hugging Face config")


def check_hf_config(hf: dict[str, Any], spec: ModelSpec, where: str) -> int:
  """Raises ConversionError if the HF architecture differs from the spec; returns its vocab size.

  Vocabulary size, RoPE theta, max positions and the norm epsilon are training choices (a stage may
  raise theta or extend the vocabulary), so they are reported, not refused.
  """
  if hf.get("model_type") != "llama":
    raise ConversionError(f"{where}: model_type={hf.get('model_type')!r}, expected 'llama'")
  for key in ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers"):
    if not isinstance(hf.get(key), int) or isinstance(hf.get(key), bool) or hf[key] <= 0:
      raise ConversionError(f"{where}: {key}={hf.get(key)!r}, expected a positive integer")
  heads = hf["num_attention_heads"]
  dims = {
      "hidden_size": (hf["hidden_size"], spec.E, "base_emb_dim"),
      "num_attention_heads": (heads, spec.H, "base_num_query_heads"),
      "num_key_value_heads": (hf.get("num_key_value_heads") or heads, spec.K, "base_num_kv_heads"),
      "head_dim": (hf.get("head_dim") or hf["hidden_size"] // heads, spec.D, "head_dim"),
      "intermediate_size": (hf["intermediate_size"], spec.M, "base_mlp_dim"),
      "num_hidden_layers": (hf["num_hidden_layers"], spec.L, "base_num_decoder_layers"),
      "tie_word_embeddings": (bool(hf.get("tie_word_embeddings", False)), spec.tie_embeddings,
                              "logits_via_embedding"),
  }
  for key, (have, want, ours) in dims.items():
    if have != want:
      raise ConversionError(f"{where}: {key}={have} but the config has {ours}={want}")
  for key in ("attention_bias", "mlp_bias"):
    if hf.get(key):
      raise ConversionError(f"{where}: {key}=true is not supported (Llama-2 has no biases)")
  if hf.get("hidden_act", "silu") != "silu":
    raise ConversionError(f"{where}: hidden_act={hf['hidden_act']!r}, expected 'silu'")
  theta = (hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta"))
  for key, have, want in (("rope_theta", theta, spec.rope_theta), ("rms_norm_eps", hf.get("rms_norm_eps"), spec.norm_eps),
                          ("max_position_embeddings", hf.get("max_position_embeddings"), spec.max_positions)):
    if have is not None and float(have) != float(want):
      log.warning("%s: %s=%s, the config says %s (the converted checkpoint follows the config)", where, key, have, want)
  return int(hf["vocab_size"])
