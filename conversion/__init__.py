"""Checkpoint converters: Orbax <-> Hugging Face, and released LWM Jax checkpoints."""
