"""The MaxText <-> HF name table and the model spec: coverage, shapes, and the errors they raise."""

import types

import pytest

from conversion import names
from conversion.spec import ConversionError, ModelSpec, check_hf_config

SPEC = ModelSpec(E=64, H=4, K=2, D=16, M=128, L=3, V=512, norm_eps=1e-5, rope_theta=1e4, max_positions=256,
                 tie_embeddings=False, scan_layers=True)
LAYER_NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")


def _hf_names(L, tie=False):
  out = {"model.embed_tokens.weight", "model.norm.weight"} | ({"lm_head.weight"} if not tie else set())
  return out | {f"model.layers.{i}.{n}.weight" for i in range(L) for n in LAYER_NAMES}


@pytest.mark.parametrize("scanned", [True, False])
def test_table_covers_every_llama_tensor_once(scanned):
  rules = names.table(SPEC, scanned)
  hf = [n for r in rules for n in r.hf_names]
  assert len(hf) == len(set(hf)) and set(hf) == _hf_names(SPEC.L)
  assert len(rules) == (12 if scanned else 9 * SPEC.L + 3)
  q = next(r for r in rules if r.hf_names[0] == "model.layers.0.self_attn.q_proj.weight")
  assert q.hf_shape == (64, 64) and q.mt_shape == (64, 4, 16)
  assert q.leaf_shape == ((64, 3, 4, 16) if scanned else (64, 4, 16))
  o = next(r for r in rules if r.hf_names[0] == "model.layers.0.self_attn.o_proj.weight")
  assert o.hf_shape == (64, 64) and o.leaf_shape == ((4, 3, 16, 64) if scanned else (4, 16, 64))
  k = next(r for r in rules if r.hf_names[0] == "model.layers.0.self_attn.k_proj.weight")
  assert k.hf_shape == (32, 64)


def test_tied_embeddings_have_no_head():
  assert {n for r in names.table(SPEC.with_(tie_embeddings=True), True) for n in r.hf_names} == _hf_names(3, tie=True)


def test_scan_layout_detection():
  assert names.is_scanned([("decoder", "layers", "mlp", "wo", "kernel")])
  assert not names.is_scanned([("decoder", "layers_0", "mlp", "wo", "kernel")])
  with pytest.raises(ConversionError, match="no decoder layers"):
    names.is_scanned([("token_embedder", "embedding")])


def test_ledger_names_missing_extra_misshaped_and_unused_tensors():
  ledger = names.Ledger({"a": (2,), "b": (3,), "c": (1,)}, "src")
  with pytest.raises(ConversionError, match=r"src: missing tensor\(s\) \['z'\]"):
    ledger.check_all_present({"a": (2,), "z": (1,)})
  with pytest.raises(ConversionError, match=r"'b' has shape \(3,\), expected \(4,\)"):
    ledger.check_all_present({"a": (2,), "b": (4,), "c": (1,)})
  with pytest.raises(ConversionError, match=r"unexpected tensor\(s\) \['c'\]"):
    ledger.check_all_present({"a": (2,), "b": (3,)})
  ledger.take("a", (2,))
  with pytest.raises(ConversionError, match="consumed twice"):
    ledger.take("a", (2,))
  with pytest.raises(ConversionError, match="never consumed"):
    ledger.finish()


def _config(**over):
  base = dict(decoder_block=types.SimpleNamespace(value="llama2"), rope_type="default", fused_qkv=False,
              fused_mlp=False, use_qk_norm=False, attention_bias=False, mlp_bias=False, rope_min_timescale=1,
              final_logits_soft_cap=None, mlp_activations=["silu", "linear"], scan_layers=True, param_scan_axis=1,
              partial_rotary_factor=1.0, emb_dim=64, num_query_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128,
              num_decoder_layers=3, vocab_size=512, normalization_layer_epsilon=1e-5, rope_max_timescale=10000,
              max_target_length=256, logits_via_embedding=False, rope_linear_scaling_factor=1.0)
  base.update(over)
  return types.SimpleNamespace(**base)


def test_spec_from_config_and_refusals():
  assert ModelSpec.from_config(_config()) == SPEC
  for key, value in [("rope_type", "llama3.1"), ("fused_qkv", True), ("use_qk_norm", True),
                     ("decoder_block", "gemma"), ("param_scan_axis", 0), ("mlp_activations", ["gelu"])]:
    with pytest.raises(ConversionError, match=key):
      ModelSpec.from_config(_config(**{key: value}))


def test_hf_config_has_both_rope_keys_and_the_stage_length():
  config = SPEC.with_(rope_theta=5e7, max_positions=32768).hf_config(dtype="bfloat16", bos_token_id=1,
                                                                    eos_token_id=2, pad_token_id=None)
  assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 5e7} and config["rope_theta"] == 5e7
  assert config["max_position_embeddings"] == 32768 and config["architectures"] == ["LlamaForCausalLM"]
  assert (config["num_key_value_heads"], config["head_dim"], config["vocab_size"]) == (2, 16, 512)
  assert config["tie_word_embeddings"] is False and config["rms_norm_eps"] == 1e-5
  assert check_hf_config(config, SPEC, "x") == 512   # theta / length differences are reported, not refused


def test_check_hf_config_names_the_mismatch():
  config = SPEC.hf_config(dtype="float32", bos_token_id=1, eos_token_id=2, pad_token_id=None)
  with pytest.raises(ConversionError, match="num_key_value_heads=4 but the config has base_num_kv_heads=2"):
    check_hf_config(dict(config, num_key_value_heads=4), SPEC, "x")
  with pytest.raises(ConversionError, match="model_type='mistral'"):
    check_hf_config(dict(config, model_type="mistral"), SPEC, "x")
