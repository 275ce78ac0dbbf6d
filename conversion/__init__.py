"""Checkpoint converters: MaxText (Orbax) <-> Hugging Face Llama, and released LWM Jax checkpoints.

Entry point `lwm-convert` (`cli.py`). Each direction is a name table plus symmetric per-tensor
hooks (`names.py`, `hooks.py`, `from_lwm.py`), with checks that every source tensor exists, has
the expected shape, is finite (`finite.py`) and is used exactly once. Readers and writers stream one
tensor at a time (`orbax_params.py`, `safetensors_io.py`, `lwm_format.py`, `torch_bin.py`) and treat
their files as untrusted: a file they cannot decode is a ConversionError naming it. Outputs appear atomically
(`atomic.py`).
The multimodal vocabulary comes in through `vocab.py` only.
"""
