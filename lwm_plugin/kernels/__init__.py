"""Kernel packages: arrays and mesh axis names in, arrays out; no MaxText, no config objects."""
