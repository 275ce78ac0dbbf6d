"""Evaluations (needle in a haystack) over models trained with the plugin."""
