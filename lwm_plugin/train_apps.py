"""The MaxText side of lwm-train and lwm-convert, imported in one step by `lwm_plugin.launch.train_apps`.

Importing this module imports MaxText and JAX, so only the launcher imports it, after it has set
JAX_PLATFORMS. Its whole content is the modules those command lines call (a gathering point, hence
shorter than the house's 100 lines): the launcher's one function-local import stands for all of them.
`checkpoints` costs lwm-train next to nothing, as both import MaxText's config and checkpoint code.
"""

from lwm_plugin import checkpoints, training

__all__ = ["checkpoints", "training"]
