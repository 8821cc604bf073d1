"""The round-trip check: a GGUF loaded by llama.cpp must be the model that was trained.

The reference is the merged model (the base with the adapter merged in, itself checked against base + adapter by
the merge), in the dtype it was written in. On the run's eval prompts (what the model is for), three things are
compared:

- Tokens: llama.cpp tokenizes each prompt's text (special tokens parsed, BOS as the GGUF says) into exactly the
  tokens transformers trained on. A wrong pre-tokenizer or a missing special token shows up here, where Ollama and
  llama.cpp's own chat would send a different prompt than the one trained.
- Next-token log-probabilities: at every position of each prompt and of the merged model's greedy answer, the
  KL divergence from the merged model's distribution to llama.cpp's, in nats, averaged over the positions: the
  measure llama.cpp's own `llama-perplexity --kl-divergence` reports for its quantizations. It must stay within
  the tolerance of the file's type (TOLERANCE: quantization loses more at fewer bits). The largest difference of a
  likely token's log-probability and how often both pick the same next token are reported beside it.
- Stopping: where the merged model's greedy answer ends with an end-of-turn token, llama.cpp's greedy answer must
  end too, at a token llama.cpp treats as the end of generation, within the same budget.

Measured on the demo model (README, "How close is a GGUF"): 16-bit files stay below 1e-4 nats, q8_0 near 2e-4,
q4_k_m near 4e-3; a GGUF of the same run's adapter at half strength is at 0.63, so a file made from another adapter
fails by two orders of magnitude.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneterm.engine.after.generate import EvalSample, stop_token_ids
from tuneterm.engine.after.stopcheck import budget
from tuneterm.errors import ExportError
from tuneterm.work import Work

TOLERANCE = {"f32": 1e-4, "f16": 1e-3, "bf16": 1e-3, "q8_0": 2e-3, "q6_k": 5e-3, "q5_k_m": 0.02, "q5_k_s": 0.02,
             "q5_0": 0.03, "q4_k_m": 0.03, "q4_k_s": 0.04, "q4_0": 0.08, "q3_k_m": 0.1}
"""Largest mean KL divergence (nats per token) allowed for each type: for the quantized types four to twenty-one times
what the demo model measured (bench/export_tolerances.py), and at least six times below what another adapter gives
(0.63 on the demo)."""
PROMPTS = 8
TOP = 10
"""The likely tokens whose log-probabilities are compared one by one (the largest difference is reported)."""


@dataclass(frozen=True)
class Answer:
    where: str
    question: str
    merged: str
    gguf: str
    merged_ended: bool
    gguf_ended: bool


@dataclass
class RoundTrip:
    gguf: str
    """The file's name (it is checked in a staging directory, then moved)."""
    quant: str
    prompts: int
    positions: int = 0
    mean_kl: float = 0.0
    max_kl: float = 0.0
    max_logprob_difference: float = 0.0
    same_top_token: float = 0.0
    """Share of positions where both pick the same most likely token."""
    tolerance: float = 0.0
    answers: list[Answer] = field(default_factory=list)
    token_mismatches: list[str] = field(default_factory=list)
    """Prompts llama.cpp tokenizes differently from transformers, with the first difference."""
    not_stopping: list[str] = field(default_factory=list)
    """End-of-turn tokens llama.cpp does not treat as the end of generation."""

    @property
    def identical_answers(self) -> int:
        return sum(a.merged == a.gguf for a in self.answers)

    @property
    def runaway(self) -> list[Answer]:
        """Answers the merged model ended and llama.cpp did not."""
        return [a for a in self.answers if a.merged_ended and not a.gguf_ended]

    @property
    def passed(self) -> bool:
        return (not self.token_mismatches and not self.not_stopping and not self.runaway
                and self.mean_kl <= self.tolerance)

    def differences(self) -> list[str]:
        """What differed, one sentence each (empty when it passed)."""
        found = [f"llama.cpp tokenizes {m}" for m in self.token_mismatches]
        found += [f"llama.cpp does not end generation at {token}, the end of turn the model was trained to write"
                  for token in self.not_stopping]
        if self.mean_kl > self.tolerance:
            found.append(f"its next-token distribution differs from the merged model's by {self.mean_kl:.3g} nats "
                         f"per token (KL divergence, mean over {self.positions} positions), above the "
                         f"{self.tolerance:g} allowed for {self.quant}: it is not this run's model, or the conversion "
                         "lost it")
        found += [f"its greedy answer to {a.where} ({a.question[:60]!r}) does not end; the merged model's does "
                  f"({a.gguf[:80]!r})" for a in self.runaway]
        return found

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        ended = sum(a.gguf_ended for a in self.answers)
        return (f"round-trip check {verdict}: KL divergence {self.mean_kl:.2g} nats per token (allowed "
                f"{self.tolerance:g} for {self.quant}), the same next token at {self.same_top_token:.1%} of "
                f"{self.positions} positions, {ended} of {len(self.answers)} greedy answers ended by themselves, "
                f"{self.identical_answers} identical to the merged model's")

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "gguf": self.gguf, "quant": self.quant, "prompts": self.prompts,
                "positions": self.positions, "mean_kl": self.mean_kl, "max_kl": self.max_kl,
                "max_logprob_difference": self.max_logprob_difference, "same_top_token": self.same_top_token,
                "tolerance": self.tolerance, "identical_answers": self.identical_answers,
                "token_mismatches": self.token_mismatches, "not_stopping": self.not_stopping,
                "answers": [vars(a) for a in self.answers], "differences": self.differences()}


def load_gguf(path: Path, context: int, lora: Path | None = None, lora_scale: float = 1.0) -> Any:
    """A GGUF in llama.cpp, every position's logits kept; its log output silenced."""
    import os

    from llama_cpp import Llama

    try:
        return Llama(str(path), n_ctx=context, logits_all=True, verbose=False, n_threads=os.cpu_count() or 1,
                     lora_path=str(lora) if lora else None, lora_scale=lora_scale)
    except (ValueError, RuntimeError) as exc:
        raise ExportError(f"llama.cpp cannot load {path}: {exc}") from None


def gguf_adds_bos(path: Path) -> bool:
    """Whether llama.cpp puts a BOS token before a prompt it tokenizes with this GGUF (its vocabulary alone is
    read)."""
    import llama_cpp
    from llama_cpp import Llama

    model = Llama(str(path), vocab_only=True, verbose=False)
    try:
        return bool(llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(model.model)))
    finally:
        model.close()


def check_round_trip(gguf: Path, quant: str, merged_dir: Path, samples: list[EvalSample], work: Work,
                     lora: Path | None = None, lora_scale: float = 1.0,
                     on_phase: Callable[[str], None] = lambda text: None) -> RoundTrip:
    """Compare llama.cpp running `gguf` (with the adapter GGUF `lora`, if given) with the merged model in
    `merged_dir` on the eval prompts."""
    import llama_cpp
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from tuneterm.data.template import end_of_turn_token

    hf_logging.disable_progress_bar()
    chosen = samples[:PROMPTS]
    if not chosen:
        raise ExportError("the run kept no eval prompts (it had no eval split), so there is nothing to check the "
                          "GGUF on: train with data.eval set, or export --format merged")
    result = RoundTrip(gguf.name, quant, len(chosen), tolerance=TOLERANCE[quant])
    on_phase("round-trip check: the merged model's answers to the eval prompts")
    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    reference = AutoModelForCausalLM.from_pretrained(str(merged_dir))
    reference.eval()
    stop_ids = stop_token_ids(tokenizer, reference)
    new_tokens = budget(chosen, tokenizer)
    sequences, merged_answers = [], []
    for index, sample in enumerate(chosen):
        work.step("round-trip check: the merged model", index, len(chosen), force=True)
        with torch.no_grad():
            prompt = torch.tensor([sample.prompt_ids])
            output = reference.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                        max_new_tokens=new_tokens, eos_token_id=stop_ids, top_k=None, top_p=None,
                                        pad_token_id=tokenizer.pad_token_id)[0].tolist()
        sequences.append(output)
        merged_answers.append(output[len(sample.prompt_ids):])
    with torch.no_grad():
        expected = [torch.log_softmax(reference(input_ids=torch.tensor([s])).logits[0].double(), -1).numpy()
                    for s in sequences]
    del reference

    on_phase(f"round-trip check: {gguf.name} in llama.cpp")
    context = max(map(len, sequences)) + new_tokens + 8
    model = load_gguf(gguf, context, lora, lora_scale)
    try:
        vocab = llama_cpp.llama_model_get_vocab(model.model)
        end_of_turn = end_of_turn_token(tokenizer)
        if end_of_turn is not None and not llama_cpp.llama_vocab_is_eog(vocab, tokenizer.convert_tokens_to_ids(
                end_of_turn)):
            result.not_stopping.append(end_of_turn)
        adds_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        kls, differences, same = [], [], 0
        for index, (sample, sequence, want, answer) in enumerate(zip(chosen, sequences, expected, merged_answers)):
            work.step(f"round-trip check: {gguf.name} in llama.cpp", index, len(chosen), force=True)
            text = str(tokenizer.decode(sample.prompt_ids))
            tokens = model.tokenize(text.encode("utf-8"), add_bos=adds_bos, special=True)
            if tokens != sample.prompt_ids:
                at = next((i for i, (a, b) in enumerate(zip(tokens, sample.prompt_ids)) if a != b),
                          min(len(tokens), len(sample.prompt_ids)))
                result.token_mismatches.append(
                    f"{sample.where} differently from transformers: from token {at}, {tokens[at:at + 5]} where it "
                    f"trained on {sample.prompt_ids[at:at + 5]}")
            model.reset()
            model.eval(sequence)
            logits = np.array(model.scores[:len(sequence)], dtype=np.float64)
            got = logits - _log_sum_exp(logits)
            kl = (np.exp(want) * (want - got)).sum(-1)
            kls.extend(kl.tolist())
            top = np.argsort(-want, -1)[:, :TOP]
            differences.append(float(np.abs(np.take_along_axis(got, top, -1) - np.take_along_axis(want, top, -1))
                                     .max()))
            same += int((got.argmax(-1) == want.argmax(-1)).sum())
            written, ended = _greedy(model, llama_cpp, vocab, sample.prompt_ids, new_tokens, work)
            result.answers.append(Answer(sample.where, sample.question,
                                         str(tokenizer.decode(answer, skip_special_tokens=True)),
                                         str(tokenizer.decode(written, skip_special_tokens=True)),
                                         bool(answer) and answer[-1] in stop_ids, ended))
    finally:
        model.close()
    result.positions = len(kls)
    result.mean_kl = max(0.0, float(np.mean(kls)))
    result.max_kl = float(np.max(kls))
    result.max_logprob_difference = max(differences)
    result.same_top_token = same / len(kls)
    if not math.isfinite(result.mean_kl):
        result.mean_kl = math.inf
    return result


def _log_sum_exp(logits: Any) -> Any:
    import numpy as np

    top = logits.max(-1, keepdims=True)
    return top + np.log(np.exp(logits - top).sum(-1, keepdims=True))


def _greedy(model: Any, llama_cpp: Any, vocab: Any, prompt: list[int], limit: int, work: Work) -> tuple[list[int],
                                                                                                       bool]:
    """llama.cpp's greedy answer, and whether it ended at an end-of-generation token within `limit` tokens."""
    model.reset()
    model.eval(prompt)
    written: list[int] = []
    for _ in range(limit):
        work.check()
        token = int(model.scores[model.n_tokens - 1].argmax())
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            return written, True
        written.append(token)
        model.eval([token])
    return written, False
