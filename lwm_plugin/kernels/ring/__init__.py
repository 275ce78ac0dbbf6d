"""Ring attention kernels: the ring loop (`ring`), the hop implementations by name (`hop_xla`, and
`hop_pallas`, which also holds the name table), the dense reference (`reference`) and load-balanced
token layouts (`layouts`). The public entry point is `lwm_plugin.ring_attention`.
"""

from lwm_plugin.kernels.ring.common import BlockSizes, HopImpl
from lwm_plugin.kernels.ring.hop_pallas import HOP_IMPLS, IMPLS, kernels_for, resolve_impl
from lwm_plugin.kernels.ring.reference import reference_attention
from lwm_plugin.kernels.ring.ring import ring_attention

__all__ = ["BlockSizes", "HOP_IMPLS", "HopImpl", "IMPLS", "kernels_for", "reference_attention", "resolve_impl",
           "ring_attention"]
