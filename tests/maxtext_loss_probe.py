"""Run in a subprocess by `test_loader_maxtext.py`: the LWM loss through a tiny MaxText model.

`probe(data_dir)` (the tiny LWM dataset) returns a JSON-able dict of measurements (one model build for all of them):
  packed_vs_padded  loss and gradients on a packed batch and on the same examples unpacked, padded
  leakage           gradient of one packed example's loss w.r.t. embedding rows only another uses
  shaped_batch      the keys of MaxText's AOT batch shape with the seam installed
  reorder           context-parallel load balancing: do the per-token keys follow the tokens?
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.linen import partitioning

from data_loaders import tiny_data
from data_loaders.packing import pack_examples
from lwm_plugin import integration
from lwm_plugin.config.lwm_config import LWMConfig


def _examples(vocab, rng, n):
  out = []
  for _ in range(n):
    length = int(rng.integers(5, 30))
    vision = rng.random(length) < rng.choice([0.0, 0.5, 1.0])
    vision[0] = False
    tokens = np.where(vision, rng.integers(vocab.vision_start, vocab.eof_id + 2, length), rng.integers(3, 384, length))
    loss = np.r_[0, (rng.random(length - 1) < 0.8).astype(np.int32)]
    loss[-1] = 1
    out.append({"tokens": tokens.astype(np.int32), "loss_mask": loss, "is_vision": vision})
  return out


def _max_abs(tree) -> float:
  return max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(tree))


def probe(data_dir: str) -> dict:
  out = {}
  with integration.installed():
    # pylint: disable=import-outside-toplevel
    from maxtext.common.common_types import ReorderStrategy
    from maxtext.configs import pyconfig
    from maxtext.utils import max_utils, maxtext_utils, maxtext_utils_nnx, model_creation_utils

    from lwm_plugin.integration import loss_fn as lwm_loss

    config = pyconfig.initialize(["probe", "maxtext_configs/tiny_cpu_lwm_data.yml", f"lwm_tokenizer_path={data_dir}/tokenizer.model",
                                  "per_device_batch_size=16", "max_target_length=64", "run_name=probe",
                                  "lwm_text_loss_weight=0.3", "lwm_vision_loss_weight=0.7"], config_class=LWMConfig)
    vocab = tiny_data.vocab(data_dir)
    mesh = maxtext_utils.get_mesh_from_config(config)
    with jax.set_mesh(mesh), partitioning.axis_rules(config.logical_axis_rules):
      model = model_creation_utils.from_config(config, mesh=mesh, rngs=maxtext_utils_nnx.create_nnx_rngs(config))

      def loss(m, data):
        return lwm_loss.loss_fn(m, config, {k: jnp.asarray(v) for k, v in data.items()}, None, None)[0]

      value_and_grad = nnx.jit(nnx.value_and_grad(loss))
      examples = _examples(vocab, np.random.default_rng(0), 12)
      results = {}
      for name, segments in (("packed", None), ("padded", 1)):
        batch = pack_examples(examples, seq_len=64, modality_weights={}, max_segments=segments, finalize=False)
        value, grads = value_and_grad(model, batch)
        results[name] = (len(batch["inputs"]), float(value), grads)
      (rows_p, loss_p, grads_p), (rows_u, loss_u, grads_u) = results["packed"], results["padded"]
      diff = jax.tree.map(lambda a, b: a - b, grads_p, grads_u)
      out["packed_vs_padded"] = {"rows": [rows_p, rows_u], "loss": [loss_p, loss_u], "grad_max_abs": _max_abs(grads_u),
                                 "grad_max_diff": _max_abs(diff)}

      # Leakage: row = [example B (tokens 200..299), example A (tokens 3..99)]; loss on A only.
      rng = np.random.default_rng(1)
      b_tokens, a_tokens = rng.integers(200, 300, 30), rng.integers(3, 100, 30)
      inputs = np.concatenate([b_tokens, a_tokens, np.zeros(4, int)])[None].astype(np.int32)
      segments = np.r_[np.ones(30), 2 * np.ones(30), np.zeros(4)][None].astype(np.int32)
      positions = np.r_[np.arange(30), np.arange(30), np.zeros(4)][None].astype(np.int32)
      batch = {"inputs": inputs, "targets": np.roll(inputs, -1, axis=1), "inputs_segmentation": segments,
               "targets_segmentation": segments, "inputs_position": positions, "targets_position": positions,
               "targets_weights": np.where(segments == 2, 1.0 / 30, 0.0).astype(np.float32),
               "targets_vision_mask": np.zeros_like(inputs)}
      one_segment = dict(batch, inputs_segmentation=(segments > 0).astype(np.int32),
                         targets_segmentation=(segments > 0).astype(np.int32))
      leak = {}
      for name, data in (("masked", batch), ("one_segment", one_segment)):
        _, grads = value_and_grad(model, data)
        embedding = grads["token_embedder"]["embedding"][...]
        leak[name] = float(jnp.max(jnp.abs(embedding[200:300])))
        leak[f"{name}_own"] = float(jnp.max(jnp.abs(embedding[3:100])))
      out["leakage"] = leak

    out["shaped_batch"] = {str(is_eval): sorted(maxtext_utils.get_shaped_batch(config, is_eval=is_eval))
                           for is_eval in (False, True)}

    seq = jnp.arange(2 * 16, dtype=jnp.int32).reshape(2, 16)
    batch = {"inputs": seq, "targets": seq, "targets_weights": seq.astype(jnp.float32),
             "targets_vision_mask": seq % 3}
    moved = max_utils.reorder_causal_load_balanced(batch, 4, ReorderStrategy.DUAL_CHUNK_SWAP, "cpu")
    out["reorder"] = {"inputs": np.asarray(moved["inputs"]).tolist(),
                      "weights_follow": bool(jnp.all(moved["targets_weights"] == moved["inputs"])),
                      "vision_follows": bool(jnp.all(moved["targets_vision_mask"] == moved["inputs"] % 3))}
    try:
      max_utils.reorder_causal_load_balanced(dict(batch, stray_mask=seq), 4, ReorderStrategy.DUAL_CHUNK_SWAP, "cpu")
      out["reorder"]["unknown_key"] = "accepted"
    except ValueError as e:
      out["reorder"]["unknown_key"] = str(e)
  return out
