"""RUN_DIR/README.md: the run card, written when a run ends, read the way a Hugging Face model card reads.

Model, data, settings, results, the stop check, and how to use what the run made: loading the adapter with PEFT,
merging it, resuming the run. Its front matter (base_model, library_name, tags) is what the hub reads if the
directory is uploaded as it is. It replaces the empty card PEFT writes when it saves an adapter.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tuneterm.engine.after.report import RunReport, clock, loss_text, perplexity

CARD_FILE = "README.md"
METHOD_NAMES = {"lora": "LoRA", "qlora": "QLoRA", "full": "full"}


def card_markdown(report: RunReport) -> str:
    settings = report.settings
    base = str(settings.get("model.path"))
    method = str(settings.get("method"))
    front = {"base_model": base, "library_name": "peft" if method != "full" else "transformers",
             "tags": ["tuneterm", method, "sft", "trl"], "pipeline_tag": "text-generation"}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {report.run_dir.name}", "",
             f"A {METHOD_NAMES.get(method, method)} fine-tune of `{base}` on `{settings.get('data.train')}`, "
             f"trained with TRL's SFTTrainer by tuneterm. {report.why_it_ended[0].upper()}{report.why_it_ended[1:]}.",
             "", "## Results", "", "| | |", "|---|---|"]
    rows = [("steps", f"{report.steps:,}" + (f" of {report.total_steps:,} planned" if report.total_steps else "")),
            ("epochs", f"{report.epochs:.2f}" if report.epochs is not None else "-"),
            ("training time", clock(report.training_seconds)),
            ("tokens seen", f"{report.tokens_seen:,}" if report.tokens_seen is not None else "-"),
            ("train loss, first to last",
             f"{loss_text(report.train_loss_first)} to {loss_text(report.train_loss_last)}"),
            ("eval loss before training", loss_text(report.baseline_eval_loss))]
    if report.outcome == "improved":
        rows.append(("best eval loss (perplexity)",
                     f"{loss_text(report.best_eval_loss)} ({perplexity(report.best_eval_loss)}) "
                     f"at step {report.best_step}"))
    elif report.outcome == "worse_than_baseline":
        rows.append(("best eval loss", "none: no evaluation beat the loss before training"))
    rows.append(("final eval loss (perplexity)", f"{loss_text(report.final_eval_loss)} "
                                                 f"({perplexity(report.final_eval_loss)})"))
    if report.adapter_changed is not None:
        rows.append(("adapter weights", "all changed by training (adapter_check.json)" if report.adapter_changed
                     else "NOT all changed, or not finite (adapter_check.json)"))
    if report.stop_check is not None:
        verdict = "every answer ended" if report.stop_check.get("passed") else \
            f"{len(report.stop_check.get('runaway', []))} answers never ended"
        rows.append(("stop check", f"{verdict} ({report.stop_check.get('checked')} eval prompts, stop_check.json)"))
    lines += [f"| {name} | {value} |" for name, value in rows]
    if report.plots:
        lines += ["", *[f"![{p.stem}]({p.name})" for p in report.plots]]
    lines += ["", "## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| `{key}` | `{value}` |" for key, value in settings.items()]
    lines += ["", "The full resolved config, with the reason for every default, is `config.yaml`: `tuneterm train "
              "config.yaml` runs it again in a new directory.", ""]
    lines += _how_to_use(report, base, method)
    lines += _exports(report)
    return "\n".join(lines) + "\n"


def _exports(report: RunReport) -> list[str]:
    """Each export with its round-trip check: what was checked against the trained model, and what it gave."""
    if not report.exports:
        return []
    lines = ["## Exports", "", "| format | type | where | llama.cpp | round-trip check |", "|---|---|---|---|---|"]
    for export in report.exports:
        check = export.get("round_trip")
        if check is None:
            verdict = "merged model: logits checked against base + adapter"
        else:
            verdict = (f"{'passed' if check.get('passed') else 'FAILED'}: KL divergence {check.get('mean_kl', 0):.2g} "
                       f"nats/token (allowed {check.get('tolerance', 0):g}), same next token at "
                       f"{check.get('same_top_token', 0):.1%} of {check.get('positions')} positions, "
                       f"{sum(a.get('gguf_ended', False) for a in check.get('answers', []))} of "
                       f"{len(check.get('answers', []))} greedy answers ended")
        where = export.get("out_dir") if export.get("passed", True) else \
            f"not written (left in {export.get('staging')})"
        lines.append(f"| {export.get('format')} | {export.get('quant') or '-'} | `{where}` | "
                     f"{export.get('converter') or '-'} | {verdict} |")
    return [*lines, ""]


def _how_to_use(report: RunReport, base: str, method: str) -> list[str]:
    here = str(report.run_dir)
    lines = ["## Use it", ""]
    if report.adapter_dir is None:
        lines += ["This run saved no model.", ""]
    elif method == "full":
        lines += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{here}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{here}")', "```", ""]
    else:
        lines += ["Load the adapter over its base model with PEFT:", "", "```python",
                  "from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
                  f'model = AutoPeftModelForCausalLM.from_pretrained("{here}")  # loads {base} too',
                  f'tokenizer = AutoTokenizer.from_pretrained("{here}")  # with the chat template it trained on',
                  "```", "",
                  f"Talk to it, next to the base model: `tuneterm chat {here} --compare-base`. Merge it into a "
                  f"standalone model: `tuneterm merge {here} OUT_DIR` (`--scale 0.5` halves the adapter's strength, "
                  "the guides' remedy for an overfitted adapter). Take it to llama.cpp, Ollama or the Hub: "
                  f"`tuneterm export {here} OUT_DIR --format gguf|ollama|adapter-gguf|merged`, "
                  f"`tuneterm push {here} USER/NAME`.", ""]
    if report.status in ("stopped", "interrupted", "failed") and report.checkpoints:
        lines += [f"Continue the run from its last complete checkpoint: `tuneterm train --resume {here}`.", ""]
    return lines


def write_card(report: RunReport) -> Path:
    path = report.run_dir / CARD_FILE
    path.write_text(card_markdown(report), encoding="utf-8")
    return path
