"""LWM's JSONL data format: one JSON object per line -> token ids, loss mask and vision mask.

The format is LWM's (`lwm/data.py`, `VisionTextProcessor`; LWM issues #47, #73). Each line holds
a `"fields"` spec and the fields it names:

    {"fields": "[caption],vision", "caption": "a dog on a beach", "vision": [256 * F ints]}

Spec syntax, a comma-separated list of items:
  name        the field, with loss (loss mask 1)
  [name]      the field without loss (mask 0), e.g. a prompt
  a+b         text fields a and b joined by `subfield_separator` (a space)
  <|bos|>     a BOS token, <|eos|> an EOS token (bracketed: without loss)
A field whose name contains "vision" is a vision field: a flat list of VQGAN codes, `F *
tokens_per_frame` long (or a list of F frames), laid out as `<vision> f1 <eof> ... fF <eov> </vision>`.
Every example starts with BOS (mask 0) and ends with EOS (mask 1), as in LWM.

`"fields"` may be a list of specs: one is drawn per example with `random.Random(example_index)`,
LWM's modality-order swap. `CAPTION_FIELDS`, `["[caption],vision", "vision,caption"]`, is the
paper's (Sec. 3.2: swapping the order models "text-image generation, unconditional image generation,
and image captioning"): text-to-image, or the image first with loss on it as well (what the
`<s><vision>` branch of classifier-free guidance predicts) and then its caption; the reader passes
the 0-based line index within the file, as LWM does, so the choice is deterministic and survives a
resume. `FormatOptions.fields_index` fixes the choice; `FormatOptions.fields` replaces every line's
spec (e.g. `[vision],caption`: captioning without loss on the image, from the same caption lines).

A line with `"messages"` instead of `"fields"` is a chat example (`data_loaders.chat_template`).

Differences from LWM, all deliberate: text is encoded without BOS (LWM's HEAD adds a stray one);
bad input raises `LWMFormatError` naming file and line (LWM prints and drops malformed JSON,
silently truncates a vision field that is not a whole number of frames, and lets a missing field
crash with a KeyError); `skip_invalid=True` skips bad lines but counts and logs every one.
A video over the frame or token budget is subsampled uniformly with LWM's
`np.linspace(0, F - 1, n).astype(int)`, which keeps the first and the last frame.

Outputs per example: `{"tokens": int32[N], "loss_mask": int32[N], "is_vision": bool[N]}`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import random
from typing import Any, Mapping


from data_loaders.chat_template import chat_example
from data_loaders.examples import Example, ExampleBuilder, LWMFormatError, vision_frames
from data_loaders.vocab import MultimodalVocab

logger = logging.getLogger(__name__)

SPECIAL_ITEMS = ("<|bos|>", "<|eos|>")
CAPTION_FIELDS = ("[caption],vision", "vision,caption")  # both modality orders of a caption line


@dataclasses.dataclass(frozen=True)
class FormatOptions:
  """How lines become examples. The defaults are LWM's.

  max_frames         at most this many frames per vision field (LWM `max_n_frames`); None: no limit.
  max_vision_tokens  at most this many vision-mask tokens (codes + eof/eov) per vision field.
  default_fields     spec for lines without a `fields` key (e.g. "text" for plain text data).
  fields_index       pick this spec from a list of specs instead of the per-example random choice.
  fields             this spec for every line, in place of the line's own `fields` (chat lines keep theirs).
  """
  fields_key: str = "fields"
  default_fields: str | None = None
  fields_index: int = -1
  fields: str | None = None
  subfield_separator: str = " "
  max_frames: int | None = None
  max_vision_tokens: int | None = None
  add_bos: bool = True
  add_eos: bool = True

  def __post_init__(self):
    if self.fields is not None and self.fields_index >= 0:
      raise ValueError(f"fields={self.fields!r} and fields_index={self.fields_index} both choose the spec; give one")
    for spec in (self.default_fields, self.fields):
      if spec is not None:
        parse_fields_spec(spec)  # a malformed spec is an error here, not at the first line that uses it

  def frame_limit(self, vocab: MultimodalVocab) -> int | None:
    limits = []
    if self.max_frames is not None:
      limits.append(self.max_frames)
    if self.max_vision_tokens is not None:
      limits.append(self.max_vision_tokens // (vocab.tokens_per_frame + 1))
    if not limits:
      return None
    if min(limits) < 1:
      raise ValueError(f"FormatOptions: max_frames={self.max_frames}, max_vision_tokens={self.max_vision_tokens} "
                       f"leave room for no frame of {vocab.tokens_per_frame} codes + <eof>/<eov>")
    return min(limits)


@dataclasses.dataclass(frozen=True)
class Item:
  """One item of a fields spec: `kind` is text, vision, bos or eos."""
  kind: str
  names: tuple[str, ...]
  loss: bool


@functools.lru_cache(maxsize=1024)
def parse_fields_spec(spec: str) -> tuple[Item, ...]:
  """Parses `"[a+b],vision,<|eos|>"`; raises ValueError on an empty or malformed item."""
  if not spec.strip():
    raise ValueError("empty fields spec")
  items = []
  for raw in spec.split(","):
    body, loss = raw, True
    if raw.startswith("[") and raw.endswith("]"):
      body, loss = raw[1:-1], False
    if not body or "[" in body or "]" in body:
      raise ValueError(f"malformed item {raw!r} in fields spec {spec!r}")
    if body.startswith("<|") and body.endswith("|>"):
      if body not in SPECIAL_ITEMS:
        raise ValueError(f"unknown special item {body!r} in fields spec {spec!r} (known: {', '.join(SPECIAL_ITEMS)})")
      items.append(Item(body[2:-2], (), loss))
      continue
    names = tuple(body.split("+"))
    if any(not n for n in names):
      raise ValueError(f"empty field name in item {raw!r} of fields spec {spec!r}")
    is_vision = ["vision" in n for n in names]
    if any(is_vision) and len(names) > 1:
      raise ValueError(f"'+' cannot join vision fields: item {raw!r} of fields spec {spec!r}")
    items.append(Item("vision" if is_vision[0] else "text", names, loss))
  return tuple(items)


def choose_spec(fields: Any, example_index: int, options: FormatOptions) -> str:
  """The spec string of one example: the spec itself, or one of a list (LWM's modality swap)."""
  if isinstance(fields, str):
    return fields
  if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
    raise LWMFormatError("spec", f"{options.fields_key!r} must be a spec string or a non-empty list of them, "
                                 f"got {json.dumps(fields)[:200]}")
  if options.fields_index >= 0:
    if options.fields_index >= len(fields):
      raise LWMFormatError("spec", f"fields_index={options.fields_index} but the line has {len(fields)} specs")
    return fields[options.fields_index]
  return random.Random(example_index).choice(fields)


def example_from_line(line: str | bytes | Mapping[str, Any], vocab: MultimodalVocab, *, source: str = "<line>",
                      line_number: int = 0, example_index: int = 0,
                      options: FormatOptions = FormatOptions()) -> Example:
  """One JSONL line (or its parsed object) -> `{"tokens", "loss_mask", "is_vision"}`.

  `example_index` seeds the choice among several specs (LWM: the 0-based line index in the file).
  Raises `LWMFormatError` naming `source:line_number`.
  """
  try:
    return _example(line, vocab, example_index, options)
  except LWMFormatError as e:
    raise LWMFormatError(e.kind, e.reason, source, line_number) from None


def _example(line: Any, vocab: MultimodalVocab, example_index: int, options: FormatOptions) -> Example:
  if isinstance(line, (str, bytes)):
    try:
      obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise LWMFormatError("json", f"malformed JSON ({e})") from None
  else:
    obj = line
  if not isinstance(obj, Mapping):
    raise LWMFormatError("json", f"expected a JSON object, got {type(obj).__name__}")
  if options.fields_key not in obj and "messages" in obj:
    return chat_example(vocab, obj["messages"], frame_limit=options.frame_limit(vocab))
  if options.fields is not None:
    spec = options.fields
  elif options.fields_key in obj:
    spec = choose_spec(obj[options.fields_key], example_index, options)
  elif options.default_fields is not None:
    spec = options.default_fields
  else:
    raise LWMFormatError("field", f"missing field {options.fields_key!r} (and no default_fields); "
                                  f"the line has keys {sorted(obj)[:20]}")
  try:
    items = parse_fields_spec(spec)
  except ValueError as e:
    raise LWMFormatError("spec", str(e)) from None
  builder = ExampleBuilder(vocab)
  if options.add_bos:
    builder.add([vocab.bos_id], loss=False, content=False)
  for item in items:
    if item.kind in ("bos", "eos"):
      builder.add([vocab.bos_id if item.kind == "bos" else vocab.eos_id], item.loss)
      continue
    for name in item.names:
      if name not in obj:
        raise LWMFormatError("field", f"missing field {name!r} named by fields spec {spec!r}; "
                                      f"the line has keys {sorted(obj)[:20]}")
    if item.kind == "vision":
      name = item.names[0]
      builder.add_vision(vision_frames(obj[name], vocab, options.frame_limit(vocab), f"field {name!r}"), item.loss)
    else:
      values = [obj[n] for n in item.names]
      for n, v in zip(item.names, values):
        if not isinstance(v, str):
          raise LWMFormatError("type", f"text field {n!r} must be a string, got {type(v).__name__}")
      builder.add_text(options.subfield_separator.join(values), item.loss)
  if builder.content == 0:
    raise LWMFormatError("empty", f"empty example: fields spec {spec!r} produced no tokens")
  if options.add_eos:
    builder.add([vocab.eos_id], loss=True, content=False)
  return builder.build()
