"""`python -m lwm_plugin.demo` (what `make demo` runs)."""

import sys

from lwm_plugin.demo.run import main

sys.exit(main())
