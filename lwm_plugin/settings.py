"""LWM settings: the keys this plugin adds to a MaxText config.

A small pydantic mixin, composed with MaxText's own config class in `lwm_plugin.config`. It lives
apart from MaxText so that kernels, the vocabulary and the data loaders can read the field names
and defaults without importing MaxText. Every field carries a description; MaxText's
`extra="forbid"` still rejects any key that neither class declares.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class LWMSettings(BaseModel):
  """Keys added by the LWM plugin (all prefixed `lwm_`)."""

  lwm_stage: str = Field(
      "",
      description="Name of the LWM training stage (e.g. 'text-32k'); shown in the start-up log and in reports.",
  )

  # Multimodal vocabulary (lwm_plugin.vocab.MultimodalVocab.from_settings) and its loss.
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
