"""`lwm-generate`: text chat, vision understanding and image/video generation with a trained model.

  lwm-generate --config CFG.yml --model CKPT_OR_HF_DIR [inputs] [sampling] [--output OUT.json] [key=value ...]
  lwm-generate --config STAGE.yml --check [--json] [--max-new-tokens N] [compile_topology=v4-64 ...]

  text        --prompt TEXT (repeatable) | --prompt-file F (one prompt per line)   [--raw: no chat template]
              --interactive: a chat loop on standard input (history kept; end with Ctrl-D)
  vision      --vision-codes CODES.jsonl: lines {"vision": [[codes] per frame], "prompt": optional question},
              asked --prompt QUESTION unless the line has its own; or --image PNG ... / --video MP4 ...
              --vqgan WEIGHTS [--fps 4] [--max-frames 8], each asked the one --prompt; the answer is text
  generation  --generate image|video --prompt CAPTION ... [--frames N] [--cfg-scale S] --codes-output CODES.jsonl
              [--vqgan WEIGHTS: also decoded to DIR/<line>.png or .mp4 + .gif, DIR = --pixels-dir or
              the codes file's path without its suffix]
  sampling    --temperature T (0: greedy, the default) --top-k K --top-p P --seed S
              --max-new-tokens N (text answers) --stop-id ID (repeatable; default: EOS)

`--check` compiles prefill + one decode step ahead of time at the config's full `max_target_length`
(N new tokens, default 256) for its TPU pod (`lwm_topology` or `compile_topology=`, through libtpu on
any host; no weights read) and reports per-chip memory against HBM as `lwm-train --check`; exit 1
when either program does not fit.

CFG.yml describes the model as for `lwm-train` (`key=value` overrides follow); `--model` is a MaxText
items directory or a Hugging Face directory from `lwm-convert to-hf` (imported into `--import-dir`,
default a temporary directory). The model decodes with its KV cache (`inference.CachedDecoder`)
over its full `max_target_length` (pass `max_target_length=N` for a shorter cache). Prompts use the
chat template of docs/vocabulary.md, vision after the question as LWM's `vision_chat.py`; generation
uses LWM's prompts and classifier-free guidance against `<s><vision>` (data_loaders/vision_prompts.py).
`--output` gets `{"results": [{"prompt_ids", "new_ids", "text", "timing": {"prefill_s", "decode_s",
"new_tokens"}}, ...]}`, one entry per prompt (per turn with --interactive); `--codes-output` the
generated frames. Every usage error is caught before JAX is imported: `lwm-generate: error: ...`,
exit 2, nothing written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from lwm_plugin import launch
from lwm_plugin.config.files import ConfigError, check_topology, resolve_config_file
from lwm_plugin.generation import request as request_lib
from lwm_plugin.generation.sampling_params import Sampling
from lwm_plugin.model_source import UsageError, locate_model

PROG = "lwm-generate"


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n", 1)[0], formatter_class=argparse.RawDescriptionHelpFormatter,
              epilog=__doc__.split("\n\n", 1)[1])
  p.add_argument("--config", required=True, help="model config (.yml), as for lwm-train")
  p.add_argument("--model", help="MaxText .../<step>/items directory or Hugging Face directory")
  p.add_argument("--check", action="store_true", help="AOT-compile prefill + a decode step for the TPU pod")
  p.add_argument("--json", action="store_true", help="--check: the reports as JSON lines")
  p.add_argument("--prompt", action="append", default=[], help="a prompt, question or caption (repeatable)")
  p.add_argument("--prompt-file", help="prompts, one per line")
  p.add_argument("--raw", action="store_true", help="no chat template: <s> and the prompt's text")
  p.add_argument("--interactive", action="store_true", help="chat loop on standard input")
  p.add_argument("--vision-codes", help="JSONL of VQGAN codes to ask about, one visual input per line")
  p.add_argument("--image", action="append", default=[], help="an image to ask about (repeatable; needs --vqgan)")
  p.add_argument("--video", action="append", default=[], help="a video to ask about (repeatable; needs --vqgan)")
  p.add_argument("--vqgan", help="VQGAN weights (diffusers VQModel dir or LWM's vqgan file): frames <-> codes")
  p.add_argument("--fps", type=float, default=None, help="video frames read per second (default 4)")
  p.add_argument("--max-frames", type=int, default=None, help="at most this many frames per video (default 8)")
  p.add_argument("--pixels-dir", help="--generate with --vqgan: where the decoded frames go")
  p.add_argument("--generate", choices=("image", "video"), help="generate VQGAN codes from each caption")
  p.add_argument("--frames", type=int, help="frames per generated video (image: 1; video default 4)")
  p.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale (default 1.0: no guidance)")
  p.add_argument("--codes-output", help="where generated codes go (JSONL, the lwm-vision decode input)")
  p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
  p.add_argument("--top-k", type=int, default=None)
  p.add_argument("--top-p", type=float, default=None)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--max-new-tokens", type=int, default=None, help="longest text answer (default 256)")
  p.add_argument("--stop-id", type=int, action="append", default=None, help="stop after this id (default: EOS)")
  p.add_argument("--output", help="results JSON")
  p.add_argument("--import-dir", help="where a Hugging Face --model is imported (default: a temporary directory)")
  p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
  return p


def _refuse(args: argparse.Namespace, options: Sequence[str], why: str) -> None:
  for option in options:
    value = getattr(args, option.lstrip("-").replace("-", "_"))
    if value not in (None, False, []):
      raise UsageError(f"{option} {why}")


def build_request(args: argparse.Namespace) -> request_lib.GenerateRequest:
  """The checked request of parsed arguments (UsageError/ConfigError/ValueError for a usage error)."""
  config_file = resolve_config_file(args.config)
  if args.model is None:
    raise UsageError("--model is required (a MaxText items directory or a Hugging Face directory)")
  if args.json:
    raise UsageError("--json goes with --check")
  model = locate_model(args.model)
  if args.prompt and args.prompt_file:
    raise UsageError("give prompts with --prompt or --prompt-file, not both")
  prompts = request_lib.read_prompt_file(args.prompt_file) if args.prompt_file else tuple(args.prompt)
  sampling = Sampling(args.temperature, args.top_k, args.top_p, args.seed)
  common = dict(config_file=config_file, model=model, overrides=tuple(args.overrides), sampling=sampling,
                output=request_lib.check_output("--output", args.output),
                import_dir=None if args.import_dir is None else Path(args.import_dir))
  vqgan = request_lib.check_vqgan(args.vqgan)
  if args.generate:
    _refuse(args, ["--vision-codes", "--interactive", "--stop-id", "--max-new-tokens", "--image", "--video",
                   "--fps", "--max-frames"], "does not apply to --generate (codes until the last frame)")
    if args.pixels_dir is not None and vqgan is None:
      raise UsageError("--pixels-dir needs --vqgan WEIGHTS (the VQGAN that decodes the codes)")
    frames = args.frames if args.frames is not None else (1 if args.generate == "image" else 4)
    if frames < 1 or (args.generate == "image" and frames != 1):
      raise UsageError(f"--frames {frames}: an image is 1 frame, a video 1 or more")
    if not prompts:
      raise UsageError("--generate needs captions (--prompt or --prompt-file)")
    if args.codes_output is None:
      raise UsageError("--generate needs --codes-output CODES.jsonl (where the generated frames go)")
    codes_output = request_lib.check_output("--codes-output", args.codes_output)
    pixels_dir = None
    if vqgan is not None:
      pixels_dir = Path(args.pixels_dir) if args.pixels_dir else codes_output.with_suffix("")
      if pixels_dir.exists() and not pixels_dir.is_dir():
        raise UsageError(f"--pixels-dir {pixels_dir}: exists and is not a directory")
    return request_lib.GenerateRequest(
        **common, mode=args.generate, prompts=prompts, raw=args.raw, frames=frames,
        cfg_scale=1.0 if args.cfg_scale is None else args.cfg_scale, codes_output=codes_output, vqgan=vqgan,
        pixels_dir=pixels_dir)
  _refuse(args, ["--frames", "--cfg-scale", "--codes-output", "--pixels-dir"], "applies to --generate only")
  max_new_tokens = 256 if args.max_new_tokens is None else args.max_new_tokens
  if max_new_tokens < 1:
    raise UsageError(f"--max-new-tokens {max_new_tokens}: expected at least 1")
  if args.stop_id is not None and min(args.stop_id) < 0:
    raise UsageError(f"--stop-id {min(args.stop_id)}: expected a token id >= 0")
  stops = None if args.stop_id is None else tuple(args.stop_id)
  text = dict(max_new_tokens=max_new_tokens, stop_ids=stops)
  if args.image or args.video:
    _refuse(args, ["--interactive", "--prompt-file", "--vision-codes", "--raw"],
            "does not apply to --image/--video")
    if len(prompts) != 1:
      raise UsageError("--image/--video take one --prompt QUESTION (asked about every file)")
    fps = 4.0 if args.fps is None else args.fps
    max_frames = 8 if args.max_frames is None else args.max_frames
    if fps <= 0 or max_frames < 1:
      raise UsageError(f"--fps {fps} / --max-frames {max_frames}: expected a positive rate and at least 1 frame")
    return request_lib.GenerateRequest(**common, **text, mode="understand", question=prompts[0],
                                       media=request_lib.check_media([*args.image, *args.video], args.vqgan),
                                       vqgan=vqgan, fps=fps, max_frames=max_frames)
  _refuse(args, ["--vqgan", "--fps", "--max-frames"], "applies to --image/--video or --generate only")
  if args.vision_codes:
    _refuse(args, ["--interactive", "--prompt-file"], "does not apply to --vision-codes")
    if len(prompts) > 1:
      raise UsageError("--vision-codes takes one --prompt (the question asked about every line)")
    vision = request_lib.read_vision_codes(args.vision_codes, prompts[0] if prompts else None)
    _refuse(args, ["--raw"], "does not apply to --vision-codes (the vision chat template is needed)")
    return request_lib.GenerateRequest(**common, **text, mode="understand", vision=vision)
  if args.interactive:
    _refuse(args, ["--prompt", "--prompt-file", "--raw"], "does not apply to --interactive (questions come from "
            "standard input, in the chat template)")
    return request_lib.GenerateRequest(**common, **text, mode="text", interactive=True)
  if not prompts:
    raise UsageError("nothing to do: give --prompt, --prompt-file, --interactive, --vision-codes or --generate")
  return request_lib.GenerateRequest(**common, **text, mode="text", prompts=prompts, raw=args.raw)


def _check(args: argparse.Namespace) -> int:
  """`--check`: only the config, overrides and --max-new-tokens apply; exit 0 when both programs fit."""
  inputs = {k: v for k, v in vars(args).items() if k not in ("config", "check", "json", "max_new_tokens", "overrides")}
  given = sorted(k for k, v in inputs.items() if v not in (None, False, [], 0.0, 0))
  if given:
    raise UsageError(f"--check takes a config, --max-new-tokens and key=value overrides; not --{given[0].replace('_', '-')}")
  config_file = resolve_config_file(args.config)
  overrides = [*args.overrides, *check_topology(config_file, args.overrides)]
  new_tokens = 256 if args.max_new_tokens is None else args.max_new_tokens
  if new_tokens < 1:
    raise UsageError(f"--max-new-tokens {new_tokens}: expected at least 1")
  engine = launch.decode_apps(config_file, overrides, aot=True).engine
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  reports = engine.check(config_file, overrides, new_tokens)
  for report in reports:
    print(report.to_json() if args.json else "\n".join(report.lines()), flush=True)
  return 0 if all(r.fits for r in reports) else 1


def main(argv: Sequence[str] | None = None) -> int:
  """`lwm-generate`; returns the exit code (2 for every usage error, with nothing written)."""
  try:
    args = _parser().parse_args(argv)
  except SystemExit as e:  # argparse: --help (0) or a usage error (2), already printed
    return int(e.code or 0)
  if args.check:
    try:
      return _check(args)
    except (ConfigError, ValueError) as e:
      print(f"{PROG}: error: {e}", file=sys.stderr)
      return 2
  try:
    request = build_request(args)
    engine = launch.decode_apps(request.config_file, request.overrides).engine
    prepared = engine.prepare(request)
  except (ConfigError, ValueError) as e:  # UsageError is a ValueError
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  try:
    engine.run(prepared, log=lambda line: print(f"{PROG}: {line}", file=sys.stderr))
  except UsageError as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
