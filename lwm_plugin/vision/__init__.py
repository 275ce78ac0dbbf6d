"""Vision I/O: LWM's VQGAN (pixels <-> 16x16 codes), media reading and data preparation."""
