"""`attention: ring` inside MaxText (`lwm_plugin/integration/attention.py`): training equivalence with
MaxText's dot-product attention, the whole model on MaxText's own test inputs (float segment ids,
explicit shard mode), the load-balance reorder of per-token keys, the inference-mode checks and
the config errors."""

from __future__ import annotations

import types

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import read_metrics, run_lwm_train, run_python
from lwm_plugin import integration
from lwm_plugin.integration import attention, cp_reorder

STEPS = 5


def _losses(tmp_path, name, args, devices):
  metrics = tmp_path / f"{name}.jsonl"
  proc = run_lwm_train(["tiny_cpu_ring.yml", f"steps={STEPS}", f"base_output_directory={tmp_path}", f"run_name={name}",
                        f"metrics_file={metrics}", *args], devices=devices)
  assert proc.returncode == 0, proc.stderr[-6000:]
  return [row["learning/loss"] for row in read_metrics(metrics)]


def test_synthetic_packing_crosses_shard_boundaries():
  """What the training tests below feed: MaxText's synthetic packed segments, then its reorder."""
  from maxtext.input_pipeline import synthetic_data_processing as synth  # pylint: disable=import-outside-toplevel

  seg = np.asarray(synth._make_packed_segment_ids(16, 256, 8))  # pylint: disable=protected-access
  shards = seg.reshape(16, 4, 64)
  crossing = (shards[:, :-1, -1] == shards[:, 1:, 0]).sum()
  assert seg.max(axis=1).min() >= 2 and crossing > 0, (seg.max(axis=1), crossing)


@pytest.mark.slow
def test_ring_matches_dot_product_on_4_devices_with_packing(tmp_path):
  """tiny_cpu_ring.yml: context parallelism 4, packing (synthetic segments), MaxText's dual-chunk reorder."""
  ring = _losses(tmp_path, "ring", [], devices=4)
  dot = _losses(tmp_path, "dot", ["attention=dot_product"], devices=4)
  assert len(ring) == STEPS
  np.testing.assert_allclose(ring, dot, rtol=1e-5)


@pytest.mark.slow
def test_ring_composes_with_data_fsdp_and_tensor_parallelism(tmp_path):
  """16 devices: context 2 x data 2 x fsdp 2 x tensor 2 (query heads 4, kv heads 2: one kv head per shard)."""
  mesh = ["ici_context_parallelism=2", "ici_data_parallelism=2", "ici_fsdp_parallelism=2", "ici_tensor_parallelism=2",
          "per_device_batch_size=1"]
  ring = _losses(tmp_path, "ring", mesh, devices=16)
  dot = _losses(tmp_path, "dot", [*mesh, "attention=dot_product"], devices=16)
  np.testing.assert_allclose(ring, dot, rtol=1e-5)


# The whole MaxText model, built and fed as MaxText's tests/unit/model_test.py does (linen
# `transformer_as_linen`, float32 segment ids `zeros + DECODING_ACTIVE_SEQUENCE_INDICATOR`, int
# positions), once with `attention: dot_product` and once with `attention: ring` on the same params.
_MODEL_VS_DOT = """
import sys
import jax, jax.numpy as jnp, numpy as np
from flax.linen import partitioning as nn_partitioning
from maxtext.common.common_types import DECODING_ACTIVE_SEQUENCE_INDICATOR, MODEL_MODE_TRAIN
from maxtext.configs import pyconfig
from maxtext.models import models
from maxtext.utils import maxtext_utils
from lwm_plugin import integration
from maxtext_configs import config_path

ring_args, dot_args = {ring_args!r}, {dot_args!r}
rng = jax.random.PRNGKey(0)

def logits(attention, args, params, segment_ids=None):
  argv = ["test", str(config_path("tiny_cpu_ring.yml")), "run_name=test", "packing=false", "max_target_length=32",
          "per_device_batch_size=1", f"attention={{attention}}", *args]
  cfg = pyconfig.HyperParameters(integration.resolve_config(argv))
  mesh = maxtext_utils.get_mesh_from_config(cfg)
  model = models.transformer_as_linen(config=cfg, mesh=mesh, quant=None, model_mode=MODEL_MODE_TRAIN)
  shape = (cfg.global_batch_size_to_train_on, cfg.max_target_length)
  ids = jax.random.randint(rng, shape, 0, cfg.vocab_size)
  if segment_ids is None:
    segment_ids = jnp.zeros(shape) + DECODING_ACTIVE_SEQUENCE_INDICATOR
  positions = jnp.stack([jnp.arange(cfg.max_target_length, dtype=jnp.int32) for _ in range(shape[0])])
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(cfg.logical_axis_rules):
    if params is None:
      params = model.init({{"params": rng, "aqt": rng, "dropout": rng}}, ids, positions, segment_ids,
                          enable_dropout=False)
    out = model.apply(params, ids, positions, segment_ids, enable_dropout=False, model_mode=MODEL_MODE_TRAIN,
                      rngs={{"aqt": rng}})
  return np.asarray(out, np.float32), jax.tree.map(np.asarray, params), segment_ids

with integration.installed():
  dot, params, segment_ids = logits("dot_product", dot_args, None)
  assert segment_ids.dtype == jnp.float32
  ring, _, _ = logits("ring", ring_args, params)
  error = float(np.abs(ring - dot).max() / np.abs(dot).max())
  print("relative error", error)
  assert error < 1e-5, error
  try:
    logits("ring", ring_args, params, segment_ids=segment_ids + 0.5)
  except Exception as e:  # raised eagerly or, under the layer scan, by the program
    assert "segment_ids must hold integer values" in str(e) and "1.5" in str(e), e
  else:
    raise AssertionError("a non-integer segment id was accepted")
print("OK")
"""


@pytest.mark.slow
def test_whole_model_takes_maxtexts_float_segment_ids():
  """MaxText's model_test.py inputs: float32 segment ids, context parallelism 4, scanned layers (the ids
  are traced inside the layer scan, so a non-integer id is caught when the program runs)."""
  out = run_python(_MODEL_VS_DOT.format(ring_args=[], dot_args=[]), devices=4).stdout
  assert "OK" in out, out


@pytest.mark.slow
def test_whole_model_in_explicit_shard_mode_with_the_batch_sharded():
  """`shard_mode: explicit`, context 2 x expert 2: segment ids and positions arrive sharded as MaxText's
  rules say, not as the ring's shard_map wants, and are resharded first. The reference is dot_product
  on the same mesh in auto mode (in explicit mode MaxText's own dot_product fails here: "dot_general ...
  produces an illegally sharded result"); layers unscanned (in explicit mode MaxText's layer scan, applied
  eagerly, refuses its stacked params: "0th dimension of all xs should be replicated")."""
  mesh = ["ici_context_parallelism=2", "ici_expert_parallelism=2", "scan_layers=false"]
  out = run_python(_MODEL_VS_DOT.format(ring_args=[*mesh, "shard_mode=explicit"], dot_args=mesh), devices=4).stdout
  assert "OK" in out, out


def _batch(seq=32):
  tokens = jnp.arange(2 * seq, dtype=jnp.int32).reshape(2, seq)
  return {"inputs": tokens, "targets": tokens + 1, "inputs_position": tokens % seq, "inputs_segmentation": tokens * 0 + 1,
          "targets_weights": tokens.astype(jnp.float32) * 0.5, "targets_vision_mask": tokens % 3 == 0}


@pytest.mark.parametrize("cp", [2, 4])
def test_reorder_moves_lwm_per_token_keys_with_the_tokens(cp):
  from maxtext.common.common_types import ReorderStrategy  # pylint: disable=import-outside-toplevel
  from maxtext.utils import max_utils  # pylint: disable=import-outside-toplevel

  batch = _batch()
  with integration.installed():
    out = max_utils.reorder_causal_load_balanced(batch, cp, ReorderStrategy.DUAL_CHUNK_SWAP, "cpu")
  assert not np.array_equal(out["inputs"], batch["inputs"])  # it did move
  np.testing.assert_array_equal(out["targets_weights"], out["inputs"].astype(jnp.float32) * 0.5)
  np.testing.assert_array_equal(out["targets_vision_mask"], out["inputs"] % 3 == 0)
  np.testing.assert_array_equal(out["targets"], out["inputs"] + 1)


def test_reorder_refuses_unknown_per_token_keys():
  from maxtext.common.common_types import ReorderStrategy  # pylint: disable=import-outside-toplevel
  from maxtext.utils import max_utils  # pylint: disable=import-outside-toplevel

  batch = {**_batch(), "token_rewards": jnp.zeros((2, 32)), "images": jnp.zeros((2, 3, 8, 8))}
  with integration.installed(), pytest.raises(ValueError, match=r"\['token_rewards'\].*LWM_KEYS"):
    max_utils.reorder_causal_load_balanced(batch, 2, ReorderStrategy.DUAL_CHUNK_SWAP, "cpu")


def test_maxtext_reorders_exactly_the_keys_we_assume():
  """The tripwire behind MAXTEXT_REORDERED_KEYS: MaxText's own function, unpatched."""
  from maxtext.common.common_types import ReorderStrategy  # pylint: disable=import-outside-toplevel
  from maxtext.utils import max_utils  # pylint: disable=import-outside-toplevel

  assert not integration.is_installed()
  probe = jnp.arange(32).reshape(1, 32)
  keys = sorted(cp_reorder.MAXTEXT_REORDERED_KEYS) + ["probe_not_moved"]
  out = max_utils.reorder_causal_load_balanced({k: probe for k in keys}, 2, ReorderStrategy.DUAL_CHUNK_SWAP, "cpu")
  moved = {k for k in keys if not np.array_equal(out[k], probe)}
  assert moved == cp_reorder.MAXTEXT_REORDERED_KEYS


def _original(self, query, key, value, decoder_segment_ids, segment_positions, lengths, model_mode,
              use_ragged_attention=False, previous_chunk=None, bidirectional_mask=None, sinks=None, indexer_mask=None,
              compressed_mask=None, record_max_logits=False, decoder_segment_ids_kv=None, pad_kv_total=0,
              compress_ratio=0, *, qk_product_einsum, wv_product_einsum):
  return "original-result", None, None


def _ring_op():
  from maxtext.common.common_types import AttentionType  # pylint: disable=import-outside-toplevel
  return types.SimpleNamespace(attention_kernel="ring", attention_type=AttentionType.GLOBAL,
                               check_attention_inputs=lambda q, k, v: None,
                               _load_balanced_context_parallel=lambda: False)


@pytest.mark.parametrize("mode, kwargs, message", [
    ("autoregressive", {"decoder_segment_ids": None}, "segment ids say which cached tokens"),
    ("prefill", {"previous_chunk": jnp.zeros((1, 8))}, r"chunked prefill \(previous_chunk\)"),
    ("autoregressive", {"use_ragged_attention": True}, "use_ragged_attention"),
    ("vllm", {}, "does not know model_mode 'vllm'"),
])
def test_inference_modes_refuse_what_the_ring_does_not_do(mode, kwargs, message):
  """Prefill and decode run the ring (tests/test_inference.py); what they cannot do is an error, not a fallback."""
  wrapped = attention.apply_attention(_original)
  q = jnp.zeros((1, 1, 4, 16))
  args = dict(query=q, key=q, value=q, decoder_segment_ids=jnp.ones((1, 1), jnp.int32), segment_positions=None,
              lengths=None, model_mode=mode, qk_product_einsum=None, wv_product_einsum=None)
  with pytest.raises(ValueError, match=message):
    wrapped(_ring_op(), **{**args, **kwargs})
  assert wrapped(types.SimpleNamespace(attention_kernel="dot_product"), **args)[0] == "original-result"


def test_train_mode_refuses_unsupported_features():
  wrapped = attention.apply_attention(_original)
  op = types.SimpleNamespace(attention_kernel="ring", attn_logits_soft_cap=None)
  with pytest.raises(ValueError, match="does not support sinks, record_max_logits"):
    wrapped(op, query=1, key=2, value=3, decoder_segment_ids=None, segment_positions=None, lengths=None,
            model_mode="train", sinks=jnp.ones(2), record_max_logits=True, qk_product_einsum=None,
            wv_product_einsum=None)


@pytest.mark.parametrize("overrides, message", [
    (["context_parallel_strategy=ring"], "leave context_parallel_strategy at 'all_gather'"),
    (["ici_context_parallelism=3"], "needs an even context parallelism"),
    (["max_target_length=260"], r"max_target_length \(260\) divisible by 2 x context parallelism \(8\)"),
    (["attention_type=local_sliding", "sliding_window_size=64"], "supports attention_type global"),
    (["attn_logits_soft_cap=30.0"], "attn_logits_soft_cap"),
])
def test_incompatible_settings_fail_with_the_key_to_change(overrides, message):
  from maxtext_configs import config_path  # pylint: disable=import-outside-toplevel

  with pytest.raises(Exception, match=message):
    integration.resolve_config(["test", str(config_path("tiny_cpu_ring.yml")), *overrides])


def test_ring_settings_are_validated():
  from maxtext_configs import config_path  # pylint: disable=import-outside-toplevel

  with pytest.raises(Exception, match="lwm_ring_impl"):
    integration.resolve_config(["test", str(config_path("tiny_cpu_ring.yml")), "lwm_ring_impl=cuda"])
  cfg = integration.resolve_config(["test", str(config_path("tiny_cpu_ring.yml"))])
  assert (cfg.attention, cfg.lwm_ring_block_q, cfg.ici_context_parallelism) == ("ring", 32, 4)
  assert [tuple(axes) for name, axes in cfg.logical_axis_rules if name == "cache_sequence"] == [("context",)]
  dot = integration.resolve_config(["test", str(config_path("tiny_cpu.yml"))])
  assert [tuple(axes) for name, axes in dot.logical_axis_rules if name == "cache_sequence"] == [()]
  with pytest.raises(Exception, match=r"KV cache split over 'context'; logical_axis_rules maps 'cache_sequence' to "
                                      r"\['fsdp'\]"):
    integration.resolve_config(["test", str(config_path("tiny_cpu_ring.yml")),
                                "logical_axis_rules=[['cache_sequence', ['fsdp']]]"])
  cfg = integration.resolve_config(["test", str(config_path("tiny_cpu_ring.yml")), "lwm_ring_impl=pallas",
                                    "lwm_ring_block_kv=0"])
  assert (cfg.lwm_ring_impl, cfg.lwm_ring_block_kv) == ("pallas", 0)  # 0: the hop implementation's default
