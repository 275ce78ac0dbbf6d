"""Ring attention kernels: the ring loop (`ring`), per-hop implementations (`hop_xla`; Pallas hops
register through `ring.register_hop_impl`), the dense reference (`reference`) and load-balanced
token layouts (`layouts`). The public entry point is `lwm_plugin.ring_attention`.
"""

from lwm_plugin.kernels.ring.common import BlockSizes, HopImpl
from lwm_plugin.kernels.ring.reference import reference_attention
from lwm_plugin.kernels.ring.ring import HOP_IMPLS, IMPLS, kernels_for, register_hop_impl, resolve_impl, ring_attention

__all__ = ["BlockSizes", "HOP_IMPLS", "HopImpl", "IMPLS", "kernels_for", "reference_attention", "register_hop_impl",
           "resolve_impl", "ring_attention"]
