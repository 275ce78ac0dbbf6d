"""The batch schema: every per-token key of an LWM batch, declared once.

A packed row (and a batch of rows, [B, S] each) carries MaxText's keys plus the LWM loader's
two: the raw loss weights and the vision mask of each target. Every module that lists, moves,
shapes or checks per-token keys (the packer, the train step, the AOT batch shape, the
context-parallel reorder) reads them from here.
"""

from __future__ import annotations

import numpy as np

WEIGHTS = "targets_weights"          # raw per-target loss weights (data_loaders.weights)
VISION_MASK = "targets_vision_mask"  # 1 where the target is a vision token

# MaxText's per-token keys, as its train step reads them.
MAXTEXT_KEYS = ("inputs", "targets", "inputs_segmentation", "targets_segmentation", "inputs_position",
                "targets_position")
# The LWM loader's per-token keys and their dtypes.
LWM_KEYS: dict[str, type] = {WEIGHTS: np.float32, VISION_MASK: np.int32}
# The keys of a packed row / a batch, in order.
ROW_KEYS = MAXTEXT_KEYS + tuple(LWM_KEYS)
