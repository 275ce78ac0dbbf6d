"""The demo's long-context QA data (paper Sec. 3.3): its chat model writes `lwm-make-qa`'s QA pairs.

The generator is the plan's needle model (the text-chat stage in the full demo), its final
checkpoint, decoded in this process through `lwm-make-qa`'s own pipeline (`qa_pipeline.make_qa` on
the in-memory DirectRunner, generator `qa_decoder.DecoderSpec`). The books are drawn by the corpus's
generator (`synthetic_corpus.needle_book`: filler with a fact every few sentences) from a seed
stream training never used; each is cut into chunks, one QA pair is asked per chunk with the default
prompt (the chat stage learns that task from the corpus's `qa_writing.jsonl`), and adjacent chunks
are assembled per target length.

The output is then read back by the loader's reader (`sources.LWMJsonlReader`, as a chat source) and
checked; a failed check is an error naming the file and line: every example is 90-100 % of its
target length, its turns alternate user/assistant, each QA pair's chunk lies inside the example's
chunk range, and the loss falls on the answers (and their EOS) only. A pair is *grounded* when its
question asks about a fact of its own chunk and its answer is that fact's sentence; the quality
figure is the grounded fraction of the pairs whose chunk holds a fact (others cannot be grounded).

Writes `OUTPUT/longqa_books.jsonl` and `OUTPUT/longqa/` (lwm-make-qa's output directory).
Imports MaxText (through `qa_decoder`): import it after choosing the JAX platform.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from data_loaders import longqa, synthetic_corpus
from data_loaders.lwm_format import FormatOptions
from data_loaders.sources import LWMJsonlReader
from data_loaders.vocab import MultimodalVocab
from lwm_plugin.longqa_gen import qa_pipeline
from lwm_plugin.longqa_gen.qa_decoder import DecoderSpec

IN_MEMORY = ("--direct_running_mode=in_memory",)
PROMPT_CACHE = 512       # the decoder's cache (max_target_length): a chunk's prompt plus the new tokens
DECODE_BATCH = 4         # per device: 16 prompts decoded at once (the chat stage's 0.25 would decode one)
NEW_TOKENS = 48          # a pair is about 30 tokens ("Question: ... word?\nAnswer: The special magic ...")
TEMPERATURE = 0.7


class QACheckFailed(ValueError):
  """An example of the QA output breaks a rule of `lwm-make-qa`'s output (the message names its file and line)."""


@dataclasses.dataclass
class QAResult:
  """What the report says about the QA data."""
  generator: str
  books: int
  chunks: int
  qa_pairs: int
  rejects: int
  examples: dict[int, int]   # examples per target length
  pairs_used: int            # distinct QA pairs in the examples
  pairs_with_fact: int       # of those, the pairs whose chunk holds a fact
  grounded: int              # of those, about a fact of their chunk and answered with its sentence
  sample: dict[str, str]     # one example's last question and answer, and the chunk's facts
  output: Path
  wall_s: float
  step_loss: float | None = None       # one training step of the generator's config on the examples
  step_loss_tokens: int | None = None  # the tokens that step's loss fell on (answers and their EOS)

  @property
  def files(self) -> str:
    """The examples of every length, as a data source's `files` glob."""
    return f"{self.output}/longqa-*/*.jsonl"


def write_books(path: Path, seed: int, book_sentences: Sequence[int], sentences_per_fact: int, kind: str) -> Path:
  """The books, one per line (`{"id", "text"}`), from their own seed stream."""
  rng = np.random.default_rng(seed)
  return synthetic_corpus.write_jsonl(path, [synthetic_corpus.needle_book(rng, f"book{k}", n, sentences_per_fact,
                                                                          kind) for k, n in enumerate(book_sentences)])


_FACT = re.compile(r"The special magic (\S+) (?:number|word) is: (\S+)\.")
_ASKED = re.compile(r"What is the special magic (\S+) (?:number|word)\?")


def _grounded(question: str, answer: str, chunk_text: str) -> tuple[bool, bool]:
  """(the chunk holds a fact, the pair asks about one of its facts and answers with that fact's sentence)."""
  facts = {m.group(1): m.group(0) for m in _FACT.finditer(chunk_text)}
  asked = _ASKED.fullmatch(question.strip())
  return bool(facts), asked is not None and asked.group(1) in facts and answer.strip() == facts[asked.group(1)]


def _check(where: str, record: dict[str, Any], example: dict[str, np.ndarray], vocab: MultimodalVocab,
           target: int) -> None:
  messages, info = record["messages"], record["longqa"]
  tokens, loss = np.asarray(example["tokens"]), np.asarray(example["loss_mask"], bool)
  if not longqa.MIN_FRACTION * target <= len(tokens) <= target:
    raise QACheckFailed(f"{where}: {len(tokens)} tokens, expected {longqa.MIN_FRACTION:.0%}-100 % of {target}")
  if [m["role"] for m in messages] != ["user", "assistant"] * (len(messages) // 2) or not messages:
    raise QACheckFailed(f"{where}: turns {[m['role'] for m in messages]}, expected user/assistant pairs")
  first, end = info["chunks"]
  if len(info["qa_chunks"]) != len(messages) // 2 or not all(first <= c < end for c in info["qa_chunks"]):
    raise QACheckFailed(f"{where}: QA pairs of chunks {info['qa_chunks']}, outside the example's chunks "
                        f"[{first}, {end}) or not one per turn")
  answers = [i for m in messages[1::2] for i in [*vocab.encode_text(m["content"]), vocab.eos_id]]
  if tokens[loss].tolist() != answers:
    raise QACheckFailed(f"{where}: the loss falls on {int(loss.sum())} tokens, not on the {len(answers)} tokens "
                        "of the answers and their EOS")


def read_and_check(output: Path, lengths: Sequence[int], vocab: MultimodalVocab,
                   chunks: dict[str, list[longqa.Chunk]]) -> tuple[dict[int, int],
                                                                   dict[tuple[str, int], tuple[bool, bool]],
                                                                   dict[str, str]]:
  """Examples per length, per QA pair used (its chunk has a fact, it is grounded), and a sample; QACheckFailed
  on a broken example."""
  examples, grounded, sample = {}, {}, {}
  for target in lengths:
    examples[target] = 0
    for path in sorted((output / f"longqa-{qa_pipeline.length_name(target)}").glob("*.jsonl")):
      records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
      read = list(LWMJsonlReader(path, vocab, options=FormatOptions()))
      if len(read) != len(records):
        raise QACheckFailed(f"{path}: the loader reads {len(read)} examples from {len(records)} lines")
      for (example, provenance), record in zip(read, records):
        _check(f"{path}:{provenance.line_number}", record, example, vocab, target)
        info, messages = record["longqa"], record["messages"]
        for k, chunk in enumerate(info["qa_chunks"]):
          question = messages[2 * k]["content"].rsplit("\n\n", 1)[-1] if k == 0 else messages[2 * k]["content"]
          text = chunks[info["book_id"]][chunk].text
          grounded[(info["book_id"], chunk)] = _grounded(question, messages[2 * k + 1]["content"], text)
          sample = {"question": question, "answer": messages[2 * k + 1]["content"],
                    "chunk_facts": " ".join(m.group(0) for m in _FACT.finditer(text))}
        examples[target] += 1
  return examples, grounded, sample


def make_qa_data(out: Path, config_file: str, checkpoint: Path, overrides: Sequence[str], tokenizer: Path, *,
                 seed: int, book_sentences: Sequence[int], sentences_per_fact: int, kind: str, chunk_tokens: int,
                 lengths: Sequence[int], retries: int, log: Callable[[str], None]) -> QAResult:
  """Writes the books and the QA data under `out`, checks it (QACheckFailed) and scores it (see the module)."""
  start = time.monotonic()
  books = write_books(out / "longqa_books.jsonl", seed, book_sentences, sentences_per_fact, kind)
  vocab = MultimodalVocab.from_tokenizer(tokenizer)
  spec = DecoderSpec(config_file, str(checkpoint), (*overrides, f"max_target_length={PROMPT_CACHE}",
                                                          f"per_device_batch_size={DECODE_BATCH}"),
                     max_new_tokens=NEW_TOKENS, temperature=TEMPERATURE)
  generator = f"{checkpoint} (temperature {TEMPERATURE})"
  options = qa_pipeline.MakeQAOptions(
      output=str(out / "longqa"), generator_factory=spec, generator=generator, tokenizer_proto=vocab.model_proto,
      lengths=tuple(lengths), chunk_tokens=chunk_tokens, retries=retries, seed=seed)
  result = qa_pipeline.make_qa(str(books), options, IN_MEMORY, log=log)
  lines = [json.loads(x) for x in books.read_text().splitlines()]
  chunks = {b["id"]: longqa.chunk_book(vocab, b["id"], b["text"], chunk_tokens) for b in lines}
  examples, grounded, sample = read_and_check(out / "longqa", lengths, vocab, chunks)
  return QAResult(generator=generator, books=result.books, chunks=result.chunks, qa_pairs=result.qa_pairs,
                  rejects=result.rejects, examples=examples, pairs_used=len(grounded),
                  pairs_with_fact=sum(fact for fact, _ in grounded.values()),
                  grounded=sum(ok for _, ok in grounded.values()),
                  sample=sample, output=out / "longqa", wall_s=time.monotonic() - start)
