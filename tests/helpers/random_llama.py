"""A random Hugging Face LlamaForCausalLM directory written with numpy + safetensors (no torch), for tests.

The shapes of `maxtext_configs/models/tiny.yml` (64 wide, 4 query / 2 kv heads of 16, MLP 128, 2
layers) with a given vocabulary size; weights std 0.2 and norm scales in [0.5, 1.5], so logits are
far from uniform and greedy decoding is not decided by ties.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

E, H, K, D, M, L = 64, 4, 2, 16, 128, 2


def write_random_llama(out: Path, vocab_size: int, seed: int = 0) -> Path:
  rng = np.random.default_rng(seed)
  out.mkdir(parents=True, exist_ok=True)

  def w(*shape):
    return (0.2 * rng.standard_normal(shape)).astype(np.float32)

  def norm():
    return rng.uniform(0.5, 1.5, E).astype(np.float32)

  tensors = {"model.embed_tokens.weight": w(vocab_size, E), "model.norm.weight": norm(),
             "lm_head.weight": w(vocab_size, E)}
  for i in range(L):
    p = f"model.layers.{i}."
    tensors |= {p + "self_attn.q_proj.weight": w(H * D, E), p + "self_attn.k_proj.weight": w(K * D, E),
                p + "self_attn.v_proj.weight": w(K * D, E), p + "self_attn.o_proj.weight": w(E, H * D),
                p + "mlp.gate_proj.weight": w(M, E), p + "mlp.up_proj.weight": w(M, E),
                p + "mlp.down_proj.weight": w(E, M), p + "input_layernorm.weight": norm(),
                p + "post_attention_layernorm.weight": norm()}
  save_file(tensors, str(out / "model.safetensors"))
  (out / "config.json").write_text(json.dumps({
      "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": E, "intermediate_size": M,
      "num_attention_heads": H, "num_key_value_heads": K, "num_hidden_layers": L, "head_dim": D,
      "vocab_size": vocab_size, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}))
  return out
