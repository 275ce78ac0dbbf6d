"""`demo_output/report.md` and `summary.json`: losses per stage, tokens/s, the HF exports, needle
accuracies and their trend, the long-context QA data, the vision scores and pictures, the VQGAN round trip,
wall time per phase.

Accuracies are read back from the evaluations' results files (`needle_*.json`, `vision.json`), so the
report says exactly what was measured; nothing here is estimated. `summary.json` holds the same
figures for programs: per stage its losses (every step), per needle task its grids per cell
(accuracy, asked city named, digits right; rows are depths, columns context lengths), the vision
scores, and the wall time of every phase.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from pathlib import Path
from typing import Any

from data_loaders.atomic_file import atomic_path
from data_loaders.synthetic_corpus import VALUE_WORDS, needle_sentence
from lwm_plugin.demo.plan import Plan
from lwm_plugin.demo.progress import clock


@dataclasses.dataclass
class Summary:
  """Everything the report shows (StageResult / NeedleResult objects come from `run.py`)."""
  plan: Plan
  stages: list[Any]
  needles: list[Any]
  hf_final: Path
  hf_needle: Path
  timings: dict[str, float]
  wall_s: float
  devices: int
  machine: str
  needle_model_size: str   # e.g. "2 layers, 64 wide"
  vision: Any = None       # `vision_eval.VisionResult` of the final model
  longqa: Any = None       # `qa_data.QAResult`: the QA data the needle model wrote
  vqgan: Any = None        # `vqgan_round_trip.RoundTripResult`: pictures through lwm-vision's VQGAN and back


def _rel(path: Path, root: Path) -> str:
  return os.path.relpath(path, root)


def result_json(result: Any, root: Path) -> dict[str, Any]:
  """A phase's result dataclass as summary.json holds it: its fields, each path relative to `root` when inside it."""
  doc = dataclasses.asdict(result)
  for key, value in doc.items():
    if isinstance(value, Path):
      doc[key] = str(value.relative_to(root)) if value.is_relative_to(root) else str(value)
  return doc


def _stage_table(summary: Summary) -> list[str]:
  lines = ["| # | stage | config | context | RoPE θ | starts from | steps | tokens/step | loss first → last | "
           "text / vision loss (last step) | tokens/s | wall (compile) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for i, r in enumerate(summary.stages, 1):
    init = r.stage.init or "scratch"
    if r.stage.extend_vocab:
      init += " (vocabulary extended)"
    vision = "—" if r.vision_loss is None else f"{r.vision_loss:.3f}"
    lines.append(f"| {i} | {r.stage.name} | `{r.stage.config}` | {r.context:,} | {r.rope_theta:,.0f} | {init} | "
                 f"{r.stage.steps} | {r.tokens_per_step:,} | {r.losses[0]:.3f} → {r.losses[-1]:.3f} | "
                 f"{r.text_loss:.3f} / {vision} | {r.tokens_per_s:,.0f} | {clock(r.wall_s)} ({clock(r.setup_s)}) |")
  return lines


_VALUE_PARTS = {"number": "number's digits (chance 0.10)", "word": "word's letters"}
_NEEDLE_SENTENCES = {kind: needle_sentence("{city}", placeholder, kind)
                     for kind, placeholder in (("number", "{7 digits}"), ("word", "{word}"))}
_NEEDLE_FORMS = {
    "number": f"Needles are the paper's: \"{_NEEDLE_SENTENCES['number']}\"",
    "word": (f"Needles are the paper's with a word for the number: \"{_NEEDLE_SENTENCES['word']}\", "
             f"the word one of {len(VALUE_WORDS)} (chance {1 / len(VALUE_WORDS):.3f}), each a single piece of the tiny "
             "tokenizer. The paper's 7-digit number is seven digit pieces, each of which must be copied from among "
             "the other needles' digits; the tiny model does not learn that in the demo's budget (BENCHMARKS.md, "
             "issue 17). `lwm-eval needle --needle-value number` runs the paper's form."),
}


def _pick_any(task: dict) -> str:
  """What an answer scores by copying the value of a needle chosen without regard to the asked city."""
  n = task["n_needles"]
  if n == 1:
    return ""
  return (f"An answer that copies the value of one of the {n} needles without matching the asked city scores "
          f"{1 / n:.2f} on average. ")


def _needle_section(result: Any, root: Path) -> list[str]:
  doc = json.loads(Path(result.results).read_text())
  lengths, depths, table = doc["context_lengths"], doc["depths"], doc["accuracy"]
  def per_length(rows):
    return [sum(rows[i][j] for i in range(len(depths))) / len(depths) for j in range(len(lengths))]

  def trend(rows):
    return " → ".join(f"{x:.2f}" for x in per_length(rows))

  lines = [f"### {result.task}: mean accuracy {result.mean:.2f}", "",
           "| depth \\ context | " + " | ".join(f"{n:,}" for n in lengths) + " |",
           "|---|" + "---|" * len(lengths)]
  lines += [f"| {100 * d:.0f}% | " + " | ".join(f"{x:.2f}" for x in row) + " |" for d, row in zip(depths, table)]
  lines += ["| **mean** | " + " | ".join(f"**{x:.2f}**" for x in per_length(table)) + " |", "",
            f"Trend over context length ({' → '.join(f'{n:,}' for n in lengths)} tokens): accuracy {trend(table)}; "
            f"below that all-or-nothing score, the answer names the asked city {trend(doc['city_named'])} and gets "
            f"{trend(doc['chars_right'])} of the {_VALUE_PARTS[doc['task']['value']]} right (by position). "
            f"{_pick_any(doc['task'])}"
            f"Heatmap: [{_rel(result.heatmap, root)}]({_rel(result.heatmap, root)}); every prompt, answer and "
            f"score: `{_rel(result.results, root)}`.", ""]
  for t in doc["trials"][:2]:  # two answers as examples
    lines.append(f"- {t['prompt_tokens']:,}-token prompt, depth {100 * t['depth']:.0f}%, asked "
                 f"{', '.join(t['cities'])} ({', '.join(t['values'])}): answer `{t['response'].strip()[:120]}`")
  return lines + [""]


def _vision_section(vision: Any, model: str, root: Path) -> list[str]:
  und, gen = vision.understanding, vision.generation
  layout = ("LWM's vision chat template (`lwm-generate --vision-codes`, `--generate image`)" if vision.layout == "chat"
            else "the layout the vision stages train on (`<s>` image → caption; `<s>` caption → image, as "
                 "`lwm-generate --generate image --raw`)")
  return ["## Vision: understanding and generation", "",
          f"Model: {model} (the final stage), its last checkpoint. {vision.prompts} held-out images of the "
          f"demo's shapes-and-colours data, drawn by the corpus's generator from a seed stream its files never use "
          f"({vision.seen_in_training} of their captions also occur in the training images); prompts in {layout}. "
          "**The demo's images are a toy codebook, not VQGAN codes**: on the "
          f"{vision.grid} × {vision.grid} code grid (LWM's VQGAN: 16 × 16) each colour owns a band "
          "of codes and each shape a texture code inside it, so both directions are scored automatically "
          "(`data_loaders/toy_vision.py`); the real image path, pictures through `lwm-vision`'s VQGAN, is shown "
          "below.", "",
          "| task | colour and shape right | colour right | shape right | background right |", "|---|---|---|---|---|",
          f"| image understanding (answer greedy, text ids) | {und['correct']:.2f} | {und['colour']:.2f} | "
          f"{und['shape']:.2f} | {und['background']:.2f} |",
          f"| text-to-image (greedy, guidance {vision.cfg_scale}) | {gen['correct']:.2f} | {gen['colour']:.2f} | "
          f"{gen['shape']:.2f} | {gen['background']:.2f} |", "",
          f"Guidance {vision.cfg_scale} is against `<s><vision>`, a branch the demo's vision stages do not train: "
          "their image-first examples carry no loss on the image, which in this tiny model tied an object's colour "
          "to its background (`lwm_plugin/demo/plan.py`; the scores at other scales: BENCHMARKS.md, issue 17).", "",
          f"Generated images, caption and verdict under each: ![generation]({_rel(vision.generation_png, root)})", "",
          f"Understanding, image and answer: ![understanding]({_rel(vision.understanding_png, root)})", "",
          f"Every prompt, answer, frame and score: `{_rel(vision.results, root)}`; wall time "
          f"{clock(vision.wall_s)}.", ""]


def _vqgan_section(trip: Any, root: Path) -> list[str]:
  weights = ("the demo's toy VQGAN: LWM's VQGAN architecture, smaller (256 codes), fit to pictures of training "
             "scenes by `tools/fit_toy_vqgan.py` and shipped with the demo (LWM's own weights are not downloaded; "
             f"`LWM_DEMO_VQGAN=PATH` runs them)" if trip.toy_weights else f"`{trip.weights}` (LWM_DEMO_VQGAN)")
  return ["### Pictures through `lwm-vision`'s VQGAN", "",
          f"The first {trip.images} held-out scenes above as 256 × 256 pictures (32 pixels per cell), encoded to "
          f"{trip.codes_per_image} codes each and decoded back by `lwm-vision encode` / `decode`'s functions, with "
          f"{weights}. Scored against the rendered pictures: cell colours right **{trip.cell_colour:.2f}** (each "
          "cell's decoded colour nearest the colour the scene put there; the shapes' texture marks are not scored), "
          f"PSNR {trip.psnr_db:.1f} dB.", "",
          f"![round trip]({_rel(trip.figure, root)})", "",
          f"Codes: `{_rel(trip.codes, root)}`; pictures under `vqgan/`; wall time {clock(trip.wall_s)}.", ""]


def _longqa_section(qa: Any, model: str, root: Path) -> list[str]:
  examples = ", ".join(f"{n} of {t:,} tokens" for t, n in qa.examples.items())
  grounded = f"{qa.grounded / qa.pairs_with_fact:.2f}" if qa.pairs_with_fact else "—"
  lines = ["## Long-context QA data (`lwm-make-qa`)", "",
           f"Model: {model}, its last checkpoint, as `lwm-make-qa`'s generator (paper Sec. 3.3: a chat model "
           "writes one question and its answer per chunk of a book; adjacent chunks and their QA pairs become "
           "long-context chat examples). Books drawn by the corpus's generator from a seed stream training never "
           "used, with a fact (a needle sentence) every few sentences. The text-chat stage learns this task from the "
           "corpus's QA-writing chats (`qa_writing.jsonl`: the default prompt around a paragraph); a text stage "
           "(the fast demo's generator) has not.", "",
           "| books | chunks | QA pairs | rejected chunks | examples | pairs in examples (chunk with a fact) | "
           "grounded |", "|---|---|---|---|---|---|---|",
           f"| {qa.books} | {qa.chunks} | {qa.qa_pairs} | {qa.rejects} | {examples} | {qa.pairs_used} "
           f"({qa.pairs_with_fact}) | {grounded} |", "",
           "Every example was read back by the loader and checked: 90-100 % of its target length, user/assistant "
           "turns, each QA pair from a chunk inside the example, loss on the answers only. *Grounded*: the question "
           "asks about a fact of its own chunk and the answer is that fact's sentence, as a fraction of the pairs "
           f"whose chunk has a fact. Output: `{_rel(qa.output, root)}/`; wall time {clock(qa.wall_s)}.", ""]
  if qa.step_loss is not None:
    lines += [f"One `{model}` training step (its config, from its checkpoint) on these examples as the chat "
              f"stages' `longqa` source: loss {qa.step_loss:.3f} on {qa.step_loss_tokens} tokens (the answers "
              "and their EOS).", ""]
  else:
    lines += ["No example was made, so no training step on them.", ""]
  if qa.sample:
    lines += [f"- a pair: `{qa.sample['question']}` → `{qa.sample['answer']}` (its chunk's facts: "
              f"`{qa.sample['chunk_facts'] or 'none'}`)", ""]
  return lines


def render(summary: Summary, root: Path) -> str:
  plan, stamp = summary.plan, datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  value = plan.corpus.needle_value
  tokens = sum(r.stage.steps * r.tokens_per_step for r in summary.stages)
  lines = [f"# LWM tiny demo: report ({plan.mode} mode)", "",
           f"{stamp}; {summary.machine}; {summary.devices} fake CPU devices, ring attention over the context axis "
           f"(`ici_context_parallelism: {summary.devices}`). Total wall time {clock(summary.wall_s)}, "
           f"{tokens:,} training tokens.", "",
           "## Training stages", "",
           "Each stage is MaxText's own training loop on a shipped config (`maxtext_configs/`), initialised from "
           "the previous stage's final checkpoint; losses are the per-step weighted losses (text stages: token "
           "mean; vision stages: the paper's per-example, per-modality weights, λ = 0.5 / 0.5). tokens/s is the "
           "median over steps after the first (all devices); wall includes start-up and compilation (in brackets).",
           "", *_stage_table(summary), "",
           "## Hugging Face exports", "",
           f"- final model ({plan.final_stage.name}): `{_rel(summary.hf_final, root)}/`",
           f"- needle model ({plan.needle_model}): `{_rel(summary.hf_needle, root)}/`", "",
           "Both are `LlamaForCausalLM` directories (config, safetensors, tokenizer with the multimodal "
           "vocabulary where the model has one).", "",
           "## Needle-in-a-haystack retrieval", "",
           f"Model: {plan.needle_model}, evaluated on its Hugging Face export (imported back; prompts prefilled by "
           f"ring attention over {summary.devices} devices, answers decoded greedily over the text ids). A trial "
           f"scores the fraction of the asked values that appear in the answer (LWM's scoring). {_NEEDLE_FORMS[value]} "
           "Haystacks, needles and values are drawn from a seed stream the training corpus never used.", ""]
  if all(r.mean == 0.0 for r in summary.needles):
    lines += [f"**No needle was retrieved.** The tiny model ({summary.needle_model_size}) learns the answer's "
              f"form — the sentence \"{_NEEDLE_SENTENCES[value]}\" — but in this run's "
              "training budget "
              f"({tokens:,} tokens) it did not learn to copy the asked fact from the context; the diagnostics below "
              "(city named, characters of the value right) show how far it is. The same configs and commands "
              "run the paper's 7B stages (`docs/stages.md`).", ""]
  for result in summary.needles:
    lines += _needle_section(result, root)
  if summary.longqa is not None:
    lines += _longqa_section(summary.longqa, plan.needle_model, root)
  if summary.vision is not None:
    lines += _vision_section(summary.vision, plan.final_stage.name, root)
  if summary.vqgan is not None:
    lines += _vqgan_section(summary.vqgan, root)
  lines += ["## Timings", "", *[f"- {name}: {clock(s)}" for name, s in summary.timings.items()], ""]
  return "\n".join(lines)


def summary_json(summary: Summary, root: Path) -> dict[str, Any]:
  """The figures of the report for programs (`summary.json`)."""
  needles = {}
  for result in summary.needles:
    doc = json.loads(Path(result.results).read_text())
    needles[result.task] = {"mean_accuracy": result.mean, "context_lengths": doc["context_lengths"],
                            "depths": doc["depths"], **{k: doc[k] for k in ("accuracy", "city_named", "chars_right")},
                            "results": _rel(result.results, root), "heatmap": _rel(result.heatmap, root)}
  stages = [{"name": r.stage.name, "config": r.stage.config, "steps": r.stage.steps, "context": r.context,
             "rope_theta": r.rope_theta, "tokens_per_step": r.tokens_per_step, "loss_first": r.losses[0],
             "loss_last": r.losses[-1], "losses": list(r.losses), "text_loss": r.text_loss,
             "vision_loss": r.vision_loss, "tokens_per_s": r.tokens_per_s, "setup_s": r.setup_s, "wall_s": r.wall_s}
            for r in summary.stages]
  phases = {f"train {r.stage.name}": r.wall_s for r in summary.stages} | dict(summary.timings)
  return {"mode": summary.plan.mode, "wall_s": summary.wall_s, "phases_s": phases, "stages": stages,
          "needle": needles, **{key: None if result is None else result_json(result, root) for key, result in
                                (("vision", summary.vision), ("longqa", summary.longqa), ("vqgan", summary.vqgan))}}


def write(path: Path, summary: Summary) -> Path:
  """Writes the report and `summary.json` beside it, each atomically (temporary file + rename)."""
  with atomic_path(path.parent / "summary.json") as tmp, open(tmp, "w", encoding="utf-8") as f:
    json.dump(summary_json(summary, path.parent), f, indent=1)
  text = render(summary, path.parent)
  with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  return path
