"""Text from a finished run's model: the tuned model and its base, loaded once, with the adapter on or off.

The chat pane, `tuneterm chat` and the stop check all generate through TunedModel. The base model is loaded as
the run loaded it (engine/loading.py: 4-bit for QLoRA), the run's adapter is put on it with PEFT, and the base
model's answer is the same weights with the adapter disabled, so comparing them costs one model in memory.
Prompts are rendered with the run's own chat template (saved with its tokenizer in the run directory), and
generation stops at the end-of-turn token that template writes as well as at the model's EOS tokens. Tokens
are handed to a callback as they come; a cancel event stops generation after the current token.

The run's saved weights are read before anything is loaded: a truncated, overwritten or half-copied file is
named, with where an intact copy is (a checkpoint) or how to make one, instead of surfacing as the safetensors
library's traceback after the base model has loaded.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneterm.config import RunConfig, load_config
from tuneterm.data.template import end_of_turn_token, render
from tuneterm.engine.events import EVENTS_FILE, RunStarted, read_events
from tuneterm.engine.loading import detect_device, load_model
from tuneterm.engine.rundir.layout import CONFIG_FILE, last_complete_checkpoint
from tuneterm.engine.rundir.runs import summarise_run
from tuneterm.errors import LoadError, RunDirError, first_sentence
from tuneterm.hardware import Device

ADAPTER_FILE = "adapter_model.safetensors"
EVAL_SAMPLES_FILE = "eval_samples.jsonl"
EVAL_SAMPLES_KEPT = 20


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    temperature: float = 0.0
    """0 is greedy decoding: the same prompt gives the same text."""
    top_p: float = 1.0
    seed: int = 0

    def problems(self) -> list[str]:
        found = []
        if not 1 <= self.max_new_tokens <= 32768:
            found.append(f"max new tokens must be between 1 and 32768, not {self.max_new_tokens}")
        if not 0 <= self.temperature <= 5:
            found.append(f"temperature must be between 0 (greedy) and 5, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            found.append(f"top-p must be above 0 and at most 1, not {self.top_p}")
        return found

    def describe(self) -> str:
        sampling = "greedy" if self.temperature == 0 else f"temperature {self.temperature:g}, top-p {self.top_p:g}"
        return f"max {self.max_new_tokens} new tokens, {sampling}"


@dataclass(frozen=True)
class Generation:
    text: str
    tokens: int
    ended: bool
    """It wrote an end-of-turn or EOS token: the model stopped by itself."""
    cancelled: bool = False

    @property
    def hit_limit(self) -> bool:
        """It was still writing when max_new_tokens ran out."""
        return not self.ended and not self.cancelled


@dataclass(frozen=True)
class EvalSample:
    """An eval example as the model saw it in training: its prompt tokens, and the answer it was trained on."""

    where: str
    question: str
    prompt_ids: list[int]
    reference: str
    ends_turn: bool
    """The trained answer included the template's end-of-turn token (the model was taught to stop)."""

    def to_json(self) -> str:
        return json.dumps({"where": self.where, "question": self.question, "prompt_ids": self.prompt_ids,
                           "reference": self.reference, "ends_turn": self.ends_turn}, ensure_ascii=False)


def eval_samples_of(examples: list[Any], tokenizer: Any, count: int = EVAL_SAMPLES_KEPT) -> list[EvalSample]:
    """The first `count` eval examples that have a prompt: the tokens before their last trained span, and the
    text of that span (the reference answer, with its end-of-turn token)."""
    samples: list[EvalSample] = []
    for example in examples:
        if len(samples) == count:
            break
        if not example.trained_runs or example.trained_runs[-1][0] == 0:
            continue  # plain text: nothing is a prompt
        start, end = example.trained_runs[-1]
        note = example.note
        question = note.question or tokenizer.decode(example.input_ids[:start].tolist())
        where = Path(note.where).name  # "eval.jsonl:12": the file's folder is in the run's config
        samples.append(EvalSample(where, question.strip(), example.input_ids[:start].tolist(),
                                  tokenizer.decode(example.input_ids[start:end].tolist(), skip_special_tokens=True),
                                  note.ends_turn))
    return samples


def save_eval_samples(samples: list[EvalSample], run_dir: Path) -> None:
    (run_dir / EVAL_SAMPLES_FILE).write_text("".join(s.to_json() + "\n" for s in samples), encoding="utf-8")


def read_eval_samples(run_dir: Path) -> list[EvalSample]:
    """The eval prompts a run kept (none for a run without an eval split)."""
    path = run_dir / EVAL_SAMPLES_FILE
    if not path.is_file():
        return []
    return [EvalSample(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line]


def stop_token_ids(tokenizer: Any, model: Any) -> list[int]:
    """Every token that ends an answer: the template's end of turn, the tokenizer's EOS and the model's."""
    ids: list[int] = []
    token = end_of_turn_token(tokenizer)
    if token is not None:
        ids.append(tokenizer.convert_tokens_to_ids(token))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in [tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])]:
        if isinstance(value, int) and value not in ids:
            ids.append(value)
    return ids


class _Streamer:
    """transformers' streamer interface: decodes what was generated so far and hands on the new text."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None] | None, stop_ids: list[int]):
        self.tokenizer, self.on_text, self.stop_ids = tokenizer, on_text, set(stop_ids)
        self.ids: list[int] = []
        self.sent = ""
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        self.ids.extend(int(i) for i in value.reshape(-1).tolist())
        text = self.text()
        if self.on_text is not None and len(text) > len(self.sent) and not text.endswith("\ufffd"):
            self.on_text(text[len(self.sent):])
            self.sent = text

    def end(self) -> None:
        text = self.text()
        if self.on_text is not None and text != self.sent:
            self.on_text(text[len(self.sent):])
            self.sent = text

    def text(self) -> str:
        text: str = self.tokenizer.decode([i for i in self.ids if i not in self.stop_ids], skip_special_tokens=True)
        return text


class TunedModel:
    """A run's model in memory: the base with the run's adapter (or a full fine-tune's own weights)."""

    def __init__(self, run_dir: Path, config: RunConfig, model: Any, tokenizer: Any, device: Device):
        self.run_dir, self.config, self.model, self.tokenizer, self.device = run_dir, config, model, tokenizer, device
        self.has_adapter = hasattr(model, "disable_adapter")
        self.stop_ids = stop_token_ids(tokenizer, model)
        self.lock = threading.Lock()
        """One generation at a time: the adapter switch is the model's state."""

    @classmethod
    def load(cls, run_dir: Path) -> TunedModel:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar on stderr would draw over the app

        if not (run_dir / CONFIG_FILE).is_file():
            raise RunDirError(f"{run_dir}: not a tuneterm run directory (no {CONFIG_FILE})")
        config = load_config(run_dir / CONFIG_FILE)
        model: Any
        weights = run_dir / (ADAPTER_FILE if config.method != "full" else "model.safetensors")
        if not weights.is_file():
            raise RunDirError(f"{run_dir}: no {weights.name} (the run saved no model: it failed or was stopped before "
                              f"its first save)")
        check_readable(run_dir, weights)
        device = detect_device()
        tokenizer = AutoTokenizer.from_pretrained(str(run_dir))
        if config.method == "full":
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(str(run_dir), dtype=inference_dtype(device))
        else:
            import warnings

            from peft import PeftModel

            base = load_model(config, precision_for(device), device)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # PEFT calls a deprecated transformers name
                model = PeftModel.from_pretrained(base, str(run_dir))
        if device.kind != "cpu" and config.method != "qlora":
            model.to(device.kind)
        model.eval()
        return cls(run_dir, config, model, tokenizer, device)

    def eval_samples(self) -> list[EvalSample]:
        """The eval prompts the run kept; read once from its data when it kept none (it stopped before, or its
        directory was written by an older tuneterm)."""
        if (self.run_dir / EVAL_SAMPLES_FILE).is_file():
            return read_eval_samples(self.run_dir)
        from tuneterm.data.prepare import prepare
        from tuneterm.plan.planner import model_facts

        data = prepare(self.config, self.tokenizer, model_facts(self.config).context_length)
        samples = eval_samples_of(data.eval.examples if data.eval else [], self.tokenizer)
        save_eval_samples(samples, self.run_dir)
        return samples

    @functools.cached_property
    def thinking(self) -> bool | None:
        return trained_thinking(self.run_dir)

    def prompt_ids(self, text: str) -> list[int]:
        """A user message rendered with the run's chat template, in the thinking mode the run trained, ready for the
        assistant's answer."""
        rendered = render(self.tokenizer, [{"role": "user", "content": text}], thinking=self.thinking,
                          generation_prompt=True)
        return list(self.tokenizer(rendered, add_special_tokens=False)["input_ids"])

    def generate(self, prompt_ids: list[int], settings: GenerationSettings, adapter: bool = True,
                 on_text: Callable[[str], None] | None = None, cancel: threading.Event | None = None) -> Generation:
        import contextlib

        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), cancel is not None and cancel.is_set(), dtype=torch.bool)

        streamer = _Streamer(self.tokenizer, on_text, self.stop_ids)
        sampling: dict[str, Any] = ({"do_sample": False} if settings.temperature == 0 else
                                    {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p})
        with self.lock:
            switch = self.model.disable_adapter() if self.has_adapter and not adapter else contextlib.nullcontext()
            with switch:
                torch.manual_seed(settings.seed)
                inputs = torch.tensor([prompt_ids], device=self.model.device)
                output = self.model.generate(
                    input_ids=inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=settings.max_new_tokens,
                    eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id, streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_Cancelled()]), top_k=None, **sampling)
        new = output[0, len(prompt_ids):].tolist()
        ended = bool(new) and new[-1] in self.stop_ids
        return Generation(streamer.text(), len(new), ended, cancelled=cancel is not None and cancel.is_set())

    def describe(self) -> dict[str, Any]:
        """What the chat pane shows next to the answers."""
        return {"template": self.tokenizer.chat_template or "", "stop_tokens": [
            self.tokenizer.convert_ids_to_tokens(i) for i in self.stop_ids], "device": self.device.name,
            "adapter": self.has_adapter}


def trained_thinking(run_dir: Path) -> bool | None:
    """enable_thinking as the run trained (RunStarted.thinking): what its chat asks with; None for a template
    without the switch, or a run that never started training."""
    events = run_dir / EVENTS_FILE
    started = [e for e in read_events(events) if isinstance(e, RunStarted)] if events.is_file() else []
    return started[-1].thinking if started else None


def check_readable(run_dir: Path, weights: Path) -> None:
    """A LoadError naming the file and what to do when the run's saved weights cannot be read. The safetensors
    header covers the whole file (each tensor's offsets), so reading it finds a truncated, overwritten or
    half-copied file at the cost of opening it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt"):
            pass
    except (SafetensorError, OSError) as exc:
        raise LoadError(f"{weights} cannot be read, it is damaged or incomplete ({first_sentence(str(exc))}): "
                        f"{_ways_to_replace(run_dir, weights.name)}") from None


def _ways_to_replace(run_dir: Path, name: str) -> str:
    """An intact copy from the last complete checkpoint, a resume that saves the weights again (for a run that
    did not finish), or a new run."""
    ways = []
    checkpoint, _ = last_complete_checkpoint(run_dir)
    if checkpoint is not None:
        ways.append(f"replace it with {checkpoint.name}'s copy (the weights at step {checkpoint.name.split('-')[-1]})"
                    f": cp {checkpoint / name} {run_dir / name}")
        summary = summarise_run(run_dir)
        if summary is not None and summary.status not in ("completed", "early_stopped"):
            ways.append(f"resume the run, which saves it again: tuneterm train --resume {run_dir}")
    ways.append(f"train again: tuneterm train {run_dir / CONFIG_FILE}")
    return "; or ".join(ways)


def precision_for(device: Device) -> str:
    """16-bit where the device computes in it, fp32 on a CPU (where 16-bit matmuls are slow or missing)."""
    if device.kind == "cuda":
        return "bf16" if device.bf16 else "fp16"
    return "fp32"


def inference_dtype(device: Device) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision_for(device)]
