"""The LWM config, in three layers (import the module you need; this package imports nothing).

* `files`: our YAML files without MaxText: lookup of shipped configs, the `base_config` chain,
  early peeks at keys needed before MaxText is imported (it fixes JAX's platform on import).
* `settings`: the `lwm_*` keys (a pydantic mixin, no MaxText) and the model's vocabulary check.
* `lwm_config`: `LWMConfig` = MaxText's config class + the settings, with every cross-key
  validation; `check_keys` names the file and line of an unknown key. Imports MaxText.
"""
