"""LWM (Large World Model) on MaxText.

Packages: `lwm_plugin` (settings, ring attention kernels, vocabulary, loss, the one seam into
MaxText in `lwm_plugin.integration`, launchers), `data_loaders` (Grain pipeline, no MaxText),
`conversion` (checkpoint converters), `maxtext_configs` (YAML stages).

Shape legend used across the code base: B batch, S sequence, L local (per-device) length,
H query heads, K kv heads, D head dim, E embed, V vocab; e.g. `q_BxLxHxD`.

Importing this package has no side effects: MaxText is patched only by
`lwm_plugin.integration.install()`.
"""

__version__ = "0.1.0"
