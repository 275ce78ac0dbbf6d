"""MaxText's own forward pass on a checkpoint, loaded the way training loads `load_parameters_path`.

Usage: python maxtext_forward.py JOBS.json, a list of
  {"config": YML, "checkpoint": ".../<step>/items", "tokens": NPY, "out": NPY, "overrides": [...]}
The model is built by MaxText (`model_creation_utils.from_pretrained`, random init), then its
parameters are replaced by `checkpointing.load_params_from_path` (the training path's params-only
loader, which raises on any missing or mis-shaped weight) and the float32 logits of `tokens`
[B, S] (one unpacked sequence per row, positions 0..S-1) are saved.
"""

import json
import sys

import jax
import numpy as np
from flax import nnx
from maxtext.common import checkpointing
from maxtext.utils import model_creation_utils

from lwm_plugin import integration


def forward(job):
  config = integration.resolve_config(["maxtext_forward", job["config"], "run_name=forward", "enable_checkpointing=false",
                                       "dtype=float32", "weight_dtype=float32", "matmul_precision=highest",
                                       *job.get("overrides", [])])
  model, mesh = model_creation_utils.from_pretrained(config)
  params = nnx.state(model, nnx.Param)
  with jax.set_mesh(mesh):
    nnx.update(model, checkpointing.load_params_from_path(job["checkpoint"], params,
                                                          config.checkpoint_storage_concurrent_gb))
    ids = np.load(job["tokens"]).astype(np.int32)
    positions = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape)
    logits = model(decoder_input_tokens=ids, decoder_positions=positions, decoder_segment_ids=np.ones_like(ids),
                   enable_dropout=False)
  np.save(job["out"], np.asarray(logits, np.float32))


def main():
  with open(sys.argv[1], encoding="utf-8") as f:
    for job in json.load(f):
      forward(job)
      print("done", job["out"], flush=True)


if __name__ == "__main__":
  main()
