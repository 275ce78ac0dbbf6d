"""Text and vision generation over a KV-cache decoder: sampling, the decoding loop, `lwm-generate`."""
