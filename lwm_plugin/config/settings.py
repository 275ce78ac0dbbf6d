"""LWM settings: the keys this plugin adds to a MaxText config, and the model's vocabulary check.

A small pydantic mixin, composed with MaxText's own config class in `lwm_plugin.config.lwm_config`.
It lives apart from MaxText so that the launcher and tools can read the field names and defaults
without importing MaxText. Every field carries a description; MaxText's `extra="forbid"` still
rejects any key that neither class declares. `model_vocab(config)` is the one place a model's
`vocab_size` is checked against the vocabulary of its `lwm_*` keys (text-only or multimodal).
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from data_loaders.sources import LWMDataSource, check_unique_names
from data_loaders.vocab import MultimodalVocab


class LWMSettings(BaseModel):
  """Keys added by the LWM plugin (all prefixed `lwm_`)."""

  lwm_stage: str = Field(
      "",
      description="Name of the LWM training stage (e.g. 'text-32k'); shown in the start-up log and in reports.",
  )

  # Multimodal vocabulary (data_loaders.vocab.MultimodalVocab.from_settings) and its loss.
  lwm_tokenizer_path: str = Field(
      "",
      description="SentencePiece model of the text part of the multimodal vocabulary; empty: the LLaMA-2 model "
      "shipped in the maxtext package (LWM's). MaxText's own `tokenizer_path` is read only by MaxText's input "
      "pipelines.",
  )
  lwm_codebook_size: int = Field(
      8192, ge=1,
      description="VQGAN codebook size. The vision block has codebook + 256 rows (LWM: 8192 -> 8448; eof = text_size + "
      "codebook, eov = eof + 1). Keep 8192 for LWM checkpoints; smaller values are for tiny demos.",
  )
  lwm_tokens_per_frame: int = Field(
      256, ge=1, description="VQGAN codes per frame (LWM: 16x16 = 256 per 256x256 frame)."
  )
  lwm_vision_markers: Literal["text", "dedicated"] = Field(
      "text",
      description="How <vision> and </vision> are encoded: 'text' = ordinary text pieces, as LWM "
      "(checkpoint-compatible); 'dedicated' = two new ids after the vision block (one token each; new rows to "
      "train; LLaMA-2 size 40448 -> 40576).",
  )
  lwm_per_modality_softmax: bool = Field(
      False,
      description="Normalise each target over its own modality's logits (text ids or vision ids), exactly LWM's two "
      "output heads; false: one softmax over the whole merged vocabulary (MaxText's default).",
  )

  # The Grain loader (data_loaders.pipeline) and the loss weighting (lwm_plugin.losses.weighted).
  lwm_data_sources: tuple[LWMDataSource, ...] = Field(
      (),
      description="Training data of the LWM Grain loader: a list of {name, files, format, weight, group, "
      "default_fields, fields_index, fields}. Non-empty: `dataset_type: grain` runs this loader (checked at start-up); "
      "empty: MaxText's own input pipeline for dataset_type. Also read: max_target_length, packing, "
      "grain_packing_type (first_fit|best_fit), max_segments_per_seq, enable_data_shuffling, data_shuffle_seed, "
      "num_epoch (<= 0: repeat forever), grain_worker_count, grain_per_worker_buffer_size.",
  )
  lwm_eval_data_sources: tuple[LWMDataSource, ...] = Field(
      (),
      description="Evaluation data of the LWM loader (read once per evaluation, in order, not shuffled); required "
      "when lwm_data_sources is set and eval_interval > 0.",
  )
  lwm_loss_weighting: Literal["example", "token"] = Field(
      "example",
      description="'example': each loss token of example i and modality m weighs lambda_m / (n_im * N_m) (n_im: "
      "its modality-m loss tokens, N_m: examples of the global batch with any), i.e. exactly unpacked padded "
      "training, whatever the packing; 'token': the plain mean over all loss tokens (lambdas unused).",
  )
  lwm_text_loss_weight: float = Field(
      0.5, ge=0, description="lambda_text of the 'example' weighting (LWM's vision-language stages: 0.5)."
  )
  lwm_vision_loss_weight: float = Field(
      0.5, ge=0, description="lambda_vision of the 'example' weighting (LWM's vision-language stages: 0.5)."
  )
  lwm_overlong: Literal["truncate", "split", "error"] = Field(
      "error",
      description="An example longer than max_target_length + 1 tokens: 'truncate' keeps its first tokens, 'split' "
      "cuts it into consecutive pieces that are separate examples (positions restart), 'error' stops with its "
      "file and line.",
  )
  lwm_max_frames: int = Field(
      0, ge=0, description="At most this many frames per vision field (videos are subsampled uniformly, keeping "
      "the first and last frame, as LWM); 0: no limit."
  )
  lwm_max_vision_tokens: int = Field(
      0, ge=0, description="At most this many vision tokens (codes + eof/eov) per vision field, by frame "
      "subsampling; 0: no limit."
  )
  lwm_skip_invalid: bool = Field(
      False,
      description="Skip bad lines or records (logged with file and line, counted in the iterator state) instead of "
      "stopping at the first one.",
  )
  lwm_max_invalid_fraction: float = Field(
      0.01, ge=0, le=1,
      description="With lwm_skip_invalid: stop with an error once a source has skipped more than this fraction of "
      "what it read (after its first 100 records), so a wrong format cannot silently empty a source.",
  )
  lwm_packing_bins: int = Field(
      0, ge=0,
      description="Rows the packer fills at once (more bins: fuller rows, more host memory); 0: the host's batch "
      "size, as MaxText.",
  )

  # Ring attention (`attention: ring`): see lwm_plugin/integration/attention.py.
  lwm_ring_block_q: int = Field(
      0, ge=0, description="Ring attention: query block (tokens) inside one ring hop, forward pass; 0 means the "
      "hop implementation's default (XLA and Mosaic TPU 512, Triton GPU 128; Mosaic needs multiples of 128, Triton "
      "powers of two).")
  lwm_ring_block_kv: int = Field(
      0, ge=0, description="Ring attention: key/value block (tokens) inside one ring hop, forward pass; 0 means the "
      "hop implementation's default (XLA and Mosaic TPU 512, Triton GPU 64).")
  lwm_ring_block_q_bwd: int = Field(
      0, ge=0, description="Ring attention: query block of the backward pass; 0 means lwm_ring_block_q if set, "
      "else the hop implementation's default.")
  lwm_ring_block_kv_bwd: int = Field(
      0, ge=0, description="Ring attention: key/value block of the backward pass; 0 means lwm_ring_block_kv if set, "
      "else the hop implementation's default.")
  lwm_ring_impl: Literal["auto", "xla", "pallas", "pallas_tpu", "pallas_gpu"] = Field(
      "auto", description="Ring attention hop implementation: 'auto' (Mosaic kernels on TPU, Triton kernels on GPU, "
      "'xla' elsewhere; chosen when the program is compiled for its platform), 'xla' (pure JAX, every backend), "
      "'pallas' (Mosaic on TPU, Triton on GPU, the Mosaic kernels interpreted on CPU), 'pallas_tpu' or "
      "'pallas_gpu' (one kernel family, compiled on its hardware or interpreted on CPU).")
  lwm_ring_scan_unroll: int = Field(
      1, ge=1, description="Ring attention: unroll factor of the hop loop (each iteration holds two hops).")

  # The paper's training stages (maxtext_configs/lwm_*.yml, docs/stages.md).
  lwm_data_dir: str = Field(
      "",
      description="Directory of your training data. The shipped stage YAMLs name their sources under it "
      "(files: ${lwm_data_dir}/<dataset>/*.jsonl, layout in docs/stages.md); training such a stage without it is an "
      "error. Unused by configs whose sources name their own files.",
  )
  lwm_topology: str = Field(
      "",
      description="The TPU topology the stage was trained on in the paper (e.g. 'v4-512' = 256 v4 chips). "
      "`lwm-train STAGE.yml --check` AOT-compiles the train step for it, and --print-config resolves the batch sizes "
      "for it; training uses the devices it runs on. Empty: no paper topology (CPU and custom configs).",
  )

  @model_validator(mode="after")
  def _check_data(self):
    for key in ("lwm_data_sources", "lwm_eval_data_sources"):
      check_unique_names(getattr(self, key), key)
    if self.lwm_loss_weighting == "example" and self.lwm_text_loss_weight + self.lwm_vision_loss_weight == 0:
      raise ValueError("lwm_text_loss_weight and lwm_vision_loss_weight are both 0: nothing would be trained")
    return self


_VOCAB_KEYS = ("lwm_tokenizer_path", "lwm_codebook_size", "lwm_tokens_per_frame", "lwm_vision_markers")


@functools.lru_cache(maxsize=8)
def _model_vocab(vocab_settings: tuple, vocab_size: int) -> tuple[MultimodalVocab, bool]:
  settings = LWMSettings(**dict(zip(_VOCAB_KEYS, vocab_settings)))
  vocab = MultimodalVocab.from_settings(settings)
  return vocab, vocab.is_text_model(vocab_size)


def model_vocab(config: Any) -> tuple[MultimodalVocab, bool]:
  """(the multimodal vocabulary of a config's `lwm_*` keys, whether the model is text-only).

  The one check of a model's `vocab_size`: the tokenizer's text size (a text model, as LWM's text
  stages) or the multimodal size; anything else is a ValueError naming both. Cached per setting
  (the tokenizer is read once).
  """
  return _model_vocab(tuple(getattr(config, k) for k in _VOCAB_KEYS), config.vocab_size)
