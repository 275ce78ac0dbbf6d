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

  # Ring attention (`attention: ring`): see lwm_plugin/integration/attention.py.
  lwm_ring_block_q: int = Field(
      512, gt=0, description="Ring attention: query block (tokens) inside one ring hop, forward pass.")
  lwm_ring_block_kv: int = Field(
      512, gt=0, description="Ring attention: key/value block (tokens) inside one ring hop, forward pass.")
  lwm_ring_block_q_bwd: int = Field(
      0, ge=0, description="Ring attention: query block of the backward pass; 0 means lwm_ring_block_q.")
  lwm_ring_block_kv_bwd: int = Field(
      0, ge=0, description="Ring attention: key/value block of the backward pass; 0 means lwm_ring_block_kv.")
  lwm_ring_impl: Literal["auto", "xla", "pallas"] = Field(
      "auto", description="Ring attention hop implementation: 'xla' (pure JAX, every backend), 'pallas' "
      "(fused kernels), or 'auto' (the fastest available on this backend).")
  lwm_ring_scan_unroll: int = Field(
      1, ge=1, description="Ring attention: unroll factor of the hop loop (each iteration holds two hops).")
