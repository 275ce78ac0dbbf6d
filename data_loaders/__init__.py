"""Grain masked-packing loader for LWM data (importable without MaxText)."""
