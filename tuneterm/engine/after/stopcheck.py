"""Does the tuned model stop talking? A LoRA trained without its end-of-turn token never learns to end an answer.

It is one of the most reported problems after fine-tuning: the model answers, then goes on writing (another
question, another turn, repetition) until max_new_tokens. The check generates greedily for a handful of eval
prompts with a budget well above their reference answers and flags every generation that uses the whole budget
without writing an end-of-turn or EOS token, with the likely cause and where to look. The result goes to
RUN_DIR/stop_check.json; the run card and the summary screen show it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneterm.engine.after.generate import EvalSample, GenerationSettings, TunedModel, read_eval_samples

STOP_CHECK_FILE = "stop_check.json"
PROMPTS_CHECKED = 5


@dataclass(frozen=True)
class Runaway:
    where: str
    question: str
    reference: str
    generated: str


@dataclass
class StopCheck:
    checked: int
    max_new_tokens: int
    stop_tokens: list[str]
    runaway: list[Runaway] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)
    """Likely causes, most likely first, each with where to look (only when something ran away)."""
    notes: list[str] = field(default_factory=list)
    """What matters elsewhere even when every answer stopped here."""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.checked > 0 and not self.runaway

    def summary(self) -> str:
        if not self.checked:
            return "not checked: the run has no eval prompts"
        if self.passed:
            return f"every answer ended by itself ({self.checked} eval prompts, up to {self.max_new_tokens} tokens)"
        return (f"{len(self.runaway)} of {self.checked} answers never ended (they ran to {self.max_new_tokens} "
                f"tokens): {self.causes[0] if self.causes else ''}")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def budget(samples: list[EvalSample], tokenizer: Any) -> int:
    """Twice the longest reference answer and at least 64 tokens: an answer that stops is well inside it."""
    longest = max((len(tokenizer(s.reference, add_special_tokens=False)["input_ids"]) for s in samples), default=0)
    return min(1024, max(64, 2 * longest + 16))


def check_stopping(model: TunedModel, samples: list[EvalSample], count: int = PROMPTS_CHECKED) -> StopCheck:
    started = time.monotonic()
    chosen = samples[:count]
    settings = GenerationSettings(max_new_tokens=budget(chosen, model.tokenizer))
    tokens = [model.tokenizer.convert_ids_to_tokens(i) for i in model.stop_ids]
    result = StopCheck(len(chosen), settings.max_new_tokens, tokens)
    for sample in chosen:
        generation = model.generate(sample.prompt_ids, settings)
        if generation.hit_limit:
            result.runaway.append(Runaway(sample.where, sample.question, sample.reference, generation.text))
    trained_end_of_turn = all(sample.ends_turn for sample in chosen)
    result.causes = likely_causes(model, trained_end_of_turn) if result.runaway else []
    result.notes = elsewhere_notes(model)
    result.seconds = round(time.monotonic() - started, 2)
    return result


def likely_causes(model: TunedModel, trained_end_of_turn: bool) -> list[str]:
    tokenizer = model.tokenizer
    end = tokenizer.convert_ids_to_tokens(model.stop_ids[0]) if model.stop_ids else "?"
    causes = []
    if not trained_end_of_turn:
        causes.append(f"the end-of-turn token {end} was masked out of the labels of some examples, so the model "
                      "never learned to write it: look at the data summary's end-of-turn warning, data.train_on, and "
                      "whether model.chat_template closes every assistant turn with a special token (tuneterm "
                      "inspect highlights the trained tokens)")
    if tokenizer.pad_token_id in model.stop_ids:
        causes.append(f"the pad token is {tokenizer.pad_token} (also an end token): a collator that masks padding "
                      "in the labels masks the end of every answer too; tuneterm's labels are built from the template "
                      "and keep it, but data prepared elsewhere may not")
    if trained_end_of_turn:
        causes.append(f"the end-of-turn token {end} was trained in every example, yet the model has not learned "
                      "it: too few steps or too low a learning rate for it to stick (look at the eval loss), or a "
                      "chat template that differs from the one the base model was trained with (model.chat_template)")
    return causes


def elsewhere_notes(model: TunedModel) -> list[str]:
    """Stopping works here because tuneterm stops at the template's end of turn; other tools stop at EOS only."""
    from tuneterm.data.template import end_of_turn_token

    token = end_of_turn_token(model.tokenizer)
    configured = getattr(model.model.generation_config, "eos_token_id", None)
    configured_ids = configured if isinstance(configured, list) else [configured]
    if token is None:
        return []
    token_id = model.tokenizer.convert_tokens_to_ids(token)
    if token_id != model.tokenizer.eos_token_id and token_id not in configured_ids:
        return [f"the chat template ends turns with {token}, but the model's generation config stops only at "
                f"{model.tokenizer.eos_token}: other tools (pipelines, vLLM, llama.cpp) will not stop there; "
                "tuneterm merge writes a generation config that does"]
    return []


def save_stop_check(check: StopCheck, run_dir: Path) -> Path:
    path = run_dir / STOP_CHECK_FILE
    path.write_text(json.dumps(check.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_stop_check(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / STOP_CHECK_FILE
    try:
        found: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return found
    except (OSError, ValueError):
        return None


def check_after_training(run_dir: Path, config: Any, model: Any, tokenizer: Any, device: Any) -> StopCheck:
    """The stop check on the model training left in memory (the adapter as saved), before it is freed."""
    model.eval()
    check = check_stopping(TunedModel(run_dir, config, model, tokenizer, device), read_eval_samples(run_dir))
    save_stop_check(check, run_dir)
    return check
