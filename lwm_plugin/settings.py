"""LWM settings: the keys this plugin adds to a MaxText config.

A small pydantic mixin, composed with MaxText's own config class in `lwm_plugin.config`. It lives
apart from MaxText so that kernels, the vocabulary and the data loaders can read the field names
and defaults without importing MaxText. Every field carries a description; MaxText's
`extra="forbid"` still rejects any key that neither class declares.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class LWMSettings(BaseModel):
  """Keys added by the LWM plugin (all prefixed `lwm_`)."""

  lwm_stage: str = Field(
      "",
      description="Name of the LWM training stage (e.g. 'text-32k'); shown in the start-up log and in reports.",
  )
