"""`lwm-convert`: checkpoint conversion between MaxText (Orbax), Hugging Face and released LWM Jax files.

  lwm-convert to-hf    --config CONFIG.yml --checkpoint ORBAX_ITEMS_DIR --output DIR
                       [--dtype bfloat16|float32] [--no-tokenizer] [--max-shard-size 5GB]
  lwm-convert from-hf  --config CONFIG.yml --hf HF_DIR --output DIR [--extend-vocab] [--dtype float32|bfloat16]
  lwm-convert from-lwm --config CONFIG.yml --lwm PARAMS_FILE --output DIR [--extend-vocab] [--dtype ...]
  lwm-convert extend-vocab --config CONFIG.yml --checkpoint ORBAX_ITEMS_DIR --output DIR [--dtype ...]

Each command also takes MaxText `key=value` overrides after its options (as `lwm-train` does).
CONFIG.yml gives the architecture (dims, theta, stage length, vocabulary size, scan layout) and the
vocabulary (`lwm_tokenizer_path`, `lwm_codebook_size`, ...: default LLaMA-2 + LWM's 8192 codes); it
is a path or the name of a shipped file in `maxtext_configs/`. `extend-vocab` grows a text model's
MaxText checkpoint to the multimodal vocabulary of CONFIG.yml (the start of the vision stages). Outputs are written to a temporary directory and
renamed into place at the end: a failed or interrupted run leaves no output directory. Conversion
always runs on the host CPU. Also runnable as `python -m lwm_plugin.convert ...`; the Python API is
`lwm_plugin.checkpoints`.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from typing import Sequence

from conversion.atomic import Terminated
from conversion.spec import ConversionError
from lwm_plugin import launch
from lwm_plugin.config.files import ConfigError

PROG = "lwm-convert"
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMG]?)B?$", re.IGNORECASE)


def _size(text: str) -> int:
  match = _SIZE.match(text.strip())
  if not match:
    raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MB)")
  return int(float(match.group(1)) * 1024**"_KMG".index((match.group(2) or "_").upper()))


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n", 1)[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
  sub = parser.add_subparsers(dest="command", required=True, metavar="{to-hf,from-hf,from-lwm,extend-vocab}")

  def common(p: argparse.ArgumentParser, dtype_default: str, dtype_help: str) -> None:
    p.add_argument("--config", required=True, help="MaxText/LWM config (.yml) describing the model")
    p.add_argument("--output", required=True, help="output directory (must not exist)")
    p.add_argument("--dtype", choices=("bfloat16", "float32", "float16"), default=dtype_default, help=dtype_help)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="MaxText config overrides")

  p = sub.add_parser("to-hf", help="MaxText Orbax params -> Hugging Face LlamaForCausalLM directory")
  common(p, "bfloat16", "weights dtype in the safetensors files (default: bfloat16)")
  p.add_argument("--checkpoint", required=True, help="MaxText checkpoint: <run>/checkpoints/<step>/items")
  p.add_argument("--no-tokenizer", action="store_true",
                 help="write no tokenizer files (for models trained without the LWM vocabulary; vocab_size unchecked)")
  p.add_argument("--max-shard-size", type=_size, default="5GB", help="largest safetensors shard (default 5GB)")

  p = sub.add_parser("from-hf", help="Hugging Face Llama directory -> MaxText Orbax checkpoint")
  common(p, "", "parameter dtype (default: the config's weight_dtype)")
  p.add_argument("--hf", required=True, help="Hugging Face model directory (config.json + safetensors)")
  p.add_argument("--extend-vocab", action="store_true",
                 help="grow embeddings and head from the text to the multimodal vocabulary "
                      "(new rows: the mean row plus noise at the text rows' spread)")

  p = sub.add_parser("from-lwm", help="released LWM/EasyLM Jax params file -> MaxText Orbax checkpoint")
  common(p, "", "parameter dtype (default: the config's weight_dtype)")
  p.add_argument("--lwm", required=True, help="LWM streaming params file (e.g. LWM-Chat-1M-Jax/params)")
  p.add_argument("--extend-vocab", action="store_true", help="text-only LWM model -> multimodal vocabulary")

  p = sub.add_parser("extend-vocab", help="MaxText params, text vocabulary -> MaxText params, multimodal vocabulary")
  common(p, "", "parameter dtype (default: each parameter's stored dtype)")
  p.add_argument("--checkpoint", required=True, help="the text model's checkpoint: <run>/checkpoints/<step>/items")
  return parser


def _run(args: argparse.Namespace) -> None:
  checkpoints = launch.train_apps(None).checkpoints   # no config's `hardware`: conversion runs on the host
  checkpoints.quiet_failed_read_noise()  # a command line: Orbax's noise after a failed read is not for the user
  common = dict(overrides=args.overrides, progress=not args.no_progress)
  if args.command == "to-hf":
    checkpoints.to_hf(args.config, args.checkpoint, args.output, dtype=args.dtype, tokenizer=not args.no_tokenizer,
                      max_shard_bytes=args.max_shard_size, **common)
  elif args.command == "extend-vocab":
    checkpoints.extend_vocab(args.config, args.checkpoint, args.output, dtype=args.dtype, **common)
  elif args.command == "from-hf":
    checkpoints.from_hf(args.config, args.hf, args.output, dtype=args.dtype, extend_vocab=args.extend_vocab, **common)
  else:
    checkpoints.from_lwm(args.config, args.lwm, args.output, dtype=args.dtype, extend_vocab=args.extend_vocab,
                         **common)


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")   # no "PyTorch was not found" notice
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  logging.getLogger("conversion").setLevel(logging.INFO)
  try:
    _run(args)
  except (ConversionError, ConfigError) as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  except OSError as e:   # the file system refused (permissions, disk full, ...): the message names the path
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"{PROG}: interrupted; no output written", file=sys.stderr)
    return 130
  except Terminated as e:
    print(f"{PROG}: terminated; no output written", file=sys.stderr)
    return 128 + e.signum
  return 0


if __name__ == "__main__":
  sys.exit(main())
