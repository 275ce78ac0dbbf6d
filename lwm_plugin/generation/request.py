"""A checked `lwm-generate` request: what to generate, from which inputs, written where. No JAX import.

`lwm-generate` (lwm_plugin/generation/cli.py) turns its arguments into a `GenerateRequest` here,
before JAX or MaxText is imported, so every usage error is caught without loading anything:

  text        prompts (`--prompt`, repeatable, or `--prompt-file`, one prompt per line), answered in
              the chat template unless `raw`; or `interactive` (questions from standard input).
  understand  `--vision-codes CODES.jsonl`: one visual input per line, `{"vision": [[codes] per frame]}`
              (or a flat list of whole frames), with its question from the line's optional "prompt"
              or from the one `--prompt`; or `--image`/`--video` files (`media`), tokenized by the
              `--vqgan` (frames at `fps`, at most `max_frames`), each asked the one `--prompt`; the answer
              is text.
  image/video `--generate`: one caption per prompt, `frames` frames each (an image is one frame),
              classifier-free guidance `cfg_scale`; the codes go to `codes_output` (lines
              `{"prompt": ..., "vision": [[codes] per frame]}`, the `lwm-vision decode` input) and,
              given `vqgan`, decoded to pixels in `pixels_dir` (`lwm-vision decode`'s names).

Files are read and their structure checked here (`file:line` in every message); code ranges depend
on the model's vocabulary and are checked once the config is resolved (`engine.prepare`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal, Sequence

from lwm_plugin.generation.sampling_params import Sampling
from lwm_plugin.model_source import ModelSource, UsageError

Mode = Literal["text", "understand", "image", "video"]


@dataclasses.dataclass(frozen=True)
class VisionInput:
  """One line of `--vision-codes`: its frames (as read, range-checked later) and its question."""
  frames: Any
  question: str
  where: str  # file:line, for messages


@dataclasses.dataclass(frozen=True)
class GenerateRequest:
  config_file: str
  model: ModelSource
  overrides: tuple[str, ...]
  mode: Mode
  prompts: tuple[str, ...] = ()               # text prompts or captions (not for understand)
  vision: tuple[VisionInput, ...] = ()        # understand
  raw: bool = False
  interactive: bool = False
  frames: int = 1
  cfg_scale: float = 1.0
  sampling: Sampling = Sampling()
  max_new_tokens: int = 256                   # text answers; generation: frames x (tokens per frame + 1)
  stop_ids: tuple[int, ...] | None = None     # None: the vocabulary's EOS
  output: Path | None = None
  codes_output: Path | None = None
  import_dir: Path | None = None              # where a Hugging Face model is imported (None: a temporary dir)
  media: tuple[str, ...] = ()                 # understand: image/video files, read through the VQGAN
  question: str | None = None                 # understand with media: the question asked about each file
  vqgan: Path | None = None                   # VQGAN weights: media -> codes; generated codes -> pixels
  pixels_dir: Path | None = None              # image/video with vqgan: where the decoded frames go
  fps: float = 4.0                            # video frames per second read (LWM's training data: 4)
  max_frames: int = 8                         # at most this many frames per video (LWM's vision_chat: 8)


def read_prompt_file(path: str) -> tuple[str, ...]:
  """One prompt per line (a trailing newline is fine); an empty line or an empty file is an error."""
  try:
    text = Path(path).read_text(encoding="utf-8")
  except (OSError, UnicodeDecodeError) as e:
    raise UsageError(f"--prompt-file {path}: not a readable UTF-8 text file ({e})") from e
  lines = text.splitlines()
  if not lines:
    raise UsageError(f"--prompt-file {path}: no prompt (one prompt per line)")
  for number, line in enumerate(lines, 1):
    if not line.strip():
      raise UsageError(f"--prompt-file {path}:{number}: empty line (one prompt per line)")
  return tuple(lines)


def read_vision_codes(path: str, question: str | None) -> tuple[VisionInput, ...]:
  """The lines of `--vision-codes`; each needs a question (its "prompt", or `question` from `--prompt`)."""
  try:
    text = Path(path).read_text(encoding="utf-8")
  except (OSError, UnicodeDecodeError) as e:
    raise UsageError(f"--vision-codes {path}: not a readable UTF-8 text file ({e})") from e
  inputs = []
  for number, line in enumerate(text.splitlines(), 1):
    where = f"{path}:{number}"
    if not line.strip():
      raise UsageError(f"--vision-codes {where}: empty line (one JSON object per line)")
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise UsageError(f"--vision-codes {where}: not JSON ({e.msg})") from e
    if not isinstance(record, dict) or not isinstance(record.get("vision"), list):
      raise UsageError(f"--vision-codes {where}: expected an object with a \"vision\" list of frames of codes")
    line_question = record.get("prompt", question)
    if not isinstance(line_question, str) or not line_question.strip():
      raise UsageError(f"--vision-codes {where}: no question (give the line a \"prompt\" string, or --prompt TEXT)")
    inputs.append(VisionInput(record["vision"], line_question, where))
  if not inputs:
    raise UsageError(f"--vision-codes {path}: no line")
  return tuple(inputs)


def check_media(paths: Sequence[str], vqgan: str | None) -> tuple[str, ...]:
  """`--image`/`--video` files: each must exist, and the VQGAN weights must be given."""
  if vqgan is None:
    raise UsageError("--image/--video need --vqgan WEIGHTS (the VQGAN that turns frames into codes)")
  for path in paths:
    if not Path(path).is_file():
      raise UsageError(f"--image/--video {path}: no such file")
  return tuple(paths)


def check_vqgan(path: str | None) -> Path | None:
  """`--vqgan`: a diffusers VQModel directory or LWM's pickled `vqgan` file (read and checked later)."""
  if path is None:
    return None
  if not Path(path).exists():
    raise UsageError(f"--vqgan {path}: no such file or directory")
  return Path(path)


def check_output(option: str, path: str | None) -> Path | None:
  """An output file's path: its directory must exist and the path must not be a directory."""
  if path is None:
    return None
  out = Path(path)
  if out.is_dir():
    raise UsageError(f"{option} {path}: is a directory (expected a file path)")
  if not out.parent.is_dir():
    raise UsageError(f"{option} {path}: the directory {out.parent} does not exist")
  return out
