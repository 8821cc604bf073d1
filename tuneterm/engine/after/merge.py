"""A run's adapter merged into its base model: one standalone model that any tool loads without PEFT.

The merge writes safetensors weights, the tokenizer with the run's chat template, and a generation config that
stops at the template's end of turn (other tools stop at EOS only). It is checked before it is handed over: the
written model is loaded back with AutoModelForCausalLM and its logits on a few prompts must equal the base model
with the adapter within a tolerance stated for the dtype. Nothing is overwritten: the output directory must be
new or empty, free disk space is checked first, and the model is written to a staging directory beside it that
is renamed only when the check passes.

A QLoRA adapter is merged into the base loaded in 16-bit, never into its 4-bit weights (re-quantising a merged
layer loses the adapter's small updates in the rounding). The merged model is the 16-bit base plus the adapter;
training saw the 4-bit base plus the adapter, so the two differ by the quantisation error of the base.

`scale` below 1 writes the adapter at a reduced strength: W + scale * (alpha / r) * BA. Unsloth's LoRA
hyperparameters guide gives this as the remedy for an overfitted adapter ("multiply the alpha value of each LoRA
matrix by 0.5"). The same guide says that adding the LoRA weights and dividing the result by 2 is equivalent;
it is not: (W + dW) / 2 halves the base weights too. Averaging the base and the merged model, (W + (W + dW)) / 2,
is the equivalent, and it is what scale 0.5 writes.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tuneterm.config import load_config
from tuneterm.engine.after.generate import ADAPTER_FILE, check_readable, read_eval_samples, stop_token_ids
from tuneterm.engine.rundir.layout import CONFIG_FILE
from tuneterm.errors import RunDirError
from tuneterm.hub import open_source
from tuneterm.plan.memory import size
from tuneterm.plan.planner import model_facts

MERGE_RECORD = "tuneterm_merge.json"
TOLERANCE = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 2e-2}
"""Largest logit difference allowed, relative to the largest logit: a few units in the last place of the dtype."""
PROBES = 4


@dataclass(frozen=True)
class MergeResult:
    out_dir: str
    run_dir: str
    base_model: str
    dtype: str
    scale: float
    bytes_written: int
    max_logit_difference: float
    largest_logit: float
    tolerance: float
    probes: int
    notes: list[str]

    @property
    def passed(self) -> bool:
        return self.max_logit_difference <= self.tolerance * max(1.0, self.largest_logit)


def output_dir_problem(out_dir: Path) -> str | None:
    """Why the merge cannot write to `out_dir`, or None."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        return f"{out_dir} exists and is not empty: merging never overwrites; choose a new directory"
    if not out_dir.parent.exists():
        return f"{out_dir.parent} does not exist: create it first, or choose another place"
    return None


def merged_dtype(config: Any) -> str:
    """16-bit as the base model is stored (bf16 when it says nothing, or is stored in 32-bit and trained in
    16-bit), fp32 for a base stored and trained in fp32 (small models trained on a CPU)."""
    precision = config.get("training.precision")
    if precision == "fp32" and config.method != "qlora":
        return "float32"
    return "float16" if precision == "fp16" else "bfloat16"


def merge(run_dir: Path, out_dir: Path, scale: float = 1.0,
          on_phase: Callable[[str], None] = lambda phase: None) -> MergeResult:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    config = load_config(run_dir / CONFIG_FILE)
    if config.method == "full":
        raise RunDirError(f"{run_dir}: a full fine-tune has no adapter to merge: its run directory is already a "
                          "standalone model (AutoModelForCausalLM.from_pretrained loads it)")
    if not (run_dir / ADAPTER_FILE).is_file():
        raise RunDirError(f"{run_dir}: no {ADAPTER_FILE} (the run saved no adapter: it failed or was stopped before "
                          "its first save)")
    check_readable(run_dir, run_dir / ADAPTER_FILE)
    if not 0 < scale <= 2:
        raise RunDirError(f"the adapter scale must be above 0 and at most 2, not {scale}")
    problem = output_dir_problem(out_dir)
    if problem:
        raise RunDirError(problem)
    dtype_name = merged_dtype(config)
    needed = model_facts(config).total_params * torch.empty((), dtype=getattr(torch, dtype_name)).element_size()
    free = shutil.disk_usage(out_dir.parent).free
    if free < needed * 1.05:
        raise RunDirError(f"{out_dir.parent}: {size(free)} free, the merged model needs about {size(needed)}: "
                          "free some space or choose another disk")
    notes = [] if config.method != "qlora" else [
        f"QLoRA: the adapter is merged into the base loaded in {dtype_name}, not into its 4-bit weights (re-"
        "quantising would round the adapter's updates away); the run trained over the 4-bit base, so the merged "
        "model differs from the trained one by the base's quantisation error"]
    if scale != 1:
        notes.append(f"the adapter is merged at {scale:g} of its strength (alpha scaling: lora_alpha x {scale:g})")

    on_phase(f"loading the base model in {dtype_name} (on the CPU)")
    path = config.get("model.path")
    source = open_source(path, config.get("model.revision"), config.get("model.trust_remote_code"),
                         needs=("config", "weights"))
    dtype = getattr(torch, dtype_name)
    try:
        base = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **source.kwargs)
    except Exception as exc:  # noqa: BLE001 - damaged weights raise safetensors', torch's or pickle's own errors
        raise source.failure(exc) from None
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir))
    model = PeftModel.from_pretrained(base, str(run_dir))
    if scale != 1:
        for module in model.modules():
            if hasattr(module, "set_scale") and hasattr(module, "scaling"):
                module.set_scale("default", scale)  # type: ignore[operator]
    model.eval()
    probes = probe_inputs(run_dir, tokenizer)
    on_phase("computing the base model's logits with the adapter")
    with torch.no_grad():
        expected = [model(input_ids=torch.tensor([ids])).logits.float() for ids in probes]
    stop_ids = stop_token_ids(tokenizer, model)

    on_phase("merging")
    merged = model.merge_and_unload()
    generation = GenerationConfig.from_model_config(merged.config) if merged.generation_config is None \
        else merged.generation_config
    generation.eos_token_id = stop_ids if len(stop_ids) > 1 else stop_ids[0]
    generation.pad_token_id = tokenizer.pad_token_id
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        on_phase(f"writing to {out_dir}")
        merged.save_pretrained(str(staging), safe_serialization=True)
        generation.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        del merged, model, base
        gc.collect()

        on_phase("loading the merged model back and comparing its logits")
        reloaded = AutoModelForCausalLM.from_pretrained(str(staging), dtype=dtype)
        reloaded.eval()
        with torch.no_grad():
            actual = [reloaded(input_ids=torch.tensor([ids])).logits.float() for ids in probes]
        difference = max(float((a - e).abs().max()) for a, e in zip(actual, expected))
        largest = max(float(e.abs().max()) for e in expected)
        result = MergeResult(str(out_dir), str(run_dir), str(path), dtype_name, scale,
                             sum(f.stat().st_size for f in staging.iterdir() if f.is_file()), difference, largest,
                             TOLERANCE[dtype_name], len(probes), notes)
        if not result.passed:
            raise RunDirError(f"the merged model's logits differ from the base model with the adapter by "
                              f"{difference:.3g} (allowed {result.tolerance:g} x {max(1.0, largest):.3g}): it was "
                              "not written")
        (staging / MERGE_RECORD).write_text(json.dumps({**asdict(result), "passed": True}, indent=2) + "\n",
                                            encoding="utf-8")
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def probe_inputs(run_dir: Path, tokenizer: Any) -> list[list[int]]:
    """Eval prompts the run kept (what the model is for), or a fixed text when it kept none."""
    samples = [s.prompt_ids[-256:] for s in read_eval_samples(run_dir)[:PROBES]]
    if samples:
        return samples
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Say something about yourself."}],
                                         tokenize=False, add_generation_prompt=True)
    return [list(tokenizer(text, add_special_tokens=False)["input_ids"])]
