"""`python -m lwm_plugin.demo` (what `make demo` runs)."""

import sys

from lwm_plugin.demo import jax_env

jax_env.configure()  # before anything imports JAX

from lwm_plugin.demo.run import main  # pylint: disable=wrong-import-position

sys.exit(main())
