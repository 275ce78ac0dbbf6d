"""The MaxText side of lwm-eval, lwm-generate and lwm-make-qa, imported in one step by
`lwm_plugin.launch.decode_apps`.

Importing this module imports MaxText, JAX and Beam, so only the launcher imports it, after it has set
JAX_PLATFORMS. Its whole content is the modules those command lines call (a gathering point, hence
shorter than the house's 100 lines): the launcher's one function-local import stands for all of them.
The three share the KV-cache decoder and MaxText's models; `qa_run` imports `engine` already, so
only lwm-eval pays for modules it does not use (Beam and the VQGAN code). `check_keys` (MaxText's
config types) checks lwm-make-qa's generator config and `--set` keys before its pipeline starts.
"""

from lwm_plugin.config.lwm_config import check_keys
from lwm_plugin.evaluation import needle_run
from lwm_plugin.generation import engine
from lwm_plugin.longqa_gen import qa_run

__all__ = ["check_keys", "engine", "needle_run", "qa_run"]
