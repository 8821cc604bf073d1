"""Measure real training peaks on a GPU and compare them with tuneterm's VRAM estimate.

For each point of a grid (method, model, sequence length, micro-batch, gradient checkpointing, attention), this
builds a randomly initialised model from a real architecture config (tests/data/model_configs, no download),
trains a few optimizer steps through tuneterm's own loading and trainer code (transformers + PEFT + TRL +
bitsandbytes) on random token ids of exactly that length, and records:
  peak allocated   torch.cuda.max_memory_allocated
  peak reserved    torch.cuda.max_memory_reserved
  nvml             the process's GPU memory as NVML reports it (what nvidia-smi shows)
It prints the estimate next to each measurement with the relative error, and writes the raw results as JSON
(tests hold the estimator to them) and a Markdown table.

    python bench/vram_calibration.py --grid full --out docs/vram_calibration.json
    python bench/vram_calibration.py --compare docs/vram_calibration.json    # re-print against the estimator

Points run in one process one after another; the allocator is emptied between them, so allocated peaks are
exact and reserved peaks carry a little fragmentation from earlier points.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONFIGS = ROOT / "tests" / "data" / "model_configs"
GB = 1e9


@dataclass(frozen=True)
class Point:
    model: str
    method: str
    seq: int
    batch: int
    checkpointing: bool
    attn: str = "sdpa"
    r: int = 16
    optim: str = ""
    targets: str = "all-linear"

    def label(self) -> str:
        extras = "".join(f" {x}" for x in (self.optim, "" if self.targets == "all-linear" else self.targets) if x)
        return (f"{self.model} {self.method} seq {self.seq} x{self.batch} gc={'on' if self.checkpointing else 'off'} "
                f"{self.attn} r{self.r}{extras}")


def grid(name: str) -> list[Point]:
    if name == "smoke":
        return [Point("qwen3-0.6b", "lora", 512, 2, True), Point("qwen3-0.6b", "qlora", 512, 2, True)]
    points = []
    for method in ("lora", "qlora"):
        for seq, batch in ((512, 1), (512, 8), (2048, 1), (2048, 4), (4096, 1), (4096, 8)):
            points.append(Point("qwen3-0.6b", method, seq, batch, True))
        for seq, batch in ((512, 4), (2048, 2)):
            points.append(Point("qwen3-0.6b", method, seq, batch, False))
        points.append(Point("qwen3-0.6b", method, 1024, 2, True, "eager"))
        points.append(Point("qwen3-0.6b", method, 1024, 2, False, "eager"))
        for seq, batch in ((512, 2), (2048, 1), (2048, 4), (4096, 2)):
            points.append(Point("llama-3.2-3b", method, seq, batch, True))
        points.append(Point("llama-3.2-3b", method, 1024, 2, False))
        points.append(Point("llama-3.2-3b", method, 2048, 1, True, "eager"))
        for seq, batch in ((512, 2), (2048, 2), (4096, 1)):
            points.append(Point("mistral-7b-v0.1", method, seq, batch, True))
        points.append(Point("mistral-7b-v0.1", method, 512, 2, False))
    # Rank, optimizer and full fine-tuning terms.
    points += [Point("llama-3.2-3b", "lora", 2048, 2, True, r=64), Point("llama-3.2-3b", "lora", 2048, 2, True,
                                                                           optim="paged_adamw_8bit"),
               Point("qwen3-0.6b", "full", 512, 2, True), Point("qwen3-0.6b", "full", 512, 2, True,
                                                                 optim="adamw_8bit")]
    # The setups of the published measurements in vram-reference.md, through the transformers path.
    points += [Point("llama-2-7b", "lora", 1304, 1, False, r=8, targets="q_proj,v_proj"),
               Point("llama-2-7b", "qlora", 1304, 1, False, r=8, targets="q_proj,v_proj",
                     optim="paged_adamw_32bit"),
               Point("llama-3.2-3b", "lora", 768, 4, False, r=32, targets="q_proj,v_proj")]
    return points


def random_model_dir(name: str, cache: Path) -> Path:
    """A randomly initialised copy of a real architecture, saved once, with a small tokenizer beside it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tuneterm.demo import CHAT_TEMPLATE, build_tokenizer

    target = cache / name
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    config = AutoConfig.from_pretrained(str(CONFIGS / f"{name}.json"))
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(target)
    del model
    torch.cuda.empty_cache()
    tokenizer = build_tokenizer(["calibration text"] * 4, CHAT_TEMPLATE, vocab_size=300)
    tokenizer.save_pretrained(target)
    return target


def measure(point: Point, model_dir: Path, work: Path) -> dict:
    import pynvml
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    from tuneterm.config import config_from_mapping
    from tuneterm.engine.loading import detect_device, load_model
    from tuneterm.engine.run.runner import release_library_state
    from tuneterm.engine.run.trainer import build_trainer

    training = {"per_device_train_batch_size": point.batch, "gradient_accumulation_steps": 1, "max_steps": 3,
                "gradient_checkpointing": point.checkpointing, "precision": "bf16", "max_length": point.seq,
                "eval_steps": 1000, "save_steps": 1000, "logging_steps": 1, "per_device_eval_batch_size": point.batch}
    if point.optim:
        training["optim"] = point.optim
    mapping = {"method": point.method, "model": {"path": str(model_dir), "attn_implementation": point.attn},
               "data": {"train": "unused.jsonl"}, "training": training}
    if point.method != "full":
        targets = point.targets if point.targets == "all-linear" else point.targets.split(",")
        mapping["lora"] = {"r": point.r, "lora_alpha": point.r, "target_modules": targets}
    config = config_from_mapping(mapping).resolved({"quantization.bnb_4bit_compute_dtype": ("bfloat16", "")}
                                                   if point.method == "qlora" else {})
    device = detect_device()
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()  # left over from earlier points; subtracted from the peaks
    model = load_model(config, "bf16", device)
    vocab = model.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(10, vocab, (point.batch * 3, point.seq), generator=generator).tolist()
    dataset = Dataset.from_dict({"input_ids": rows, "labels": rows})
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    trainer = build_trainer(config, model, tokenizer, dataset, None, work / "out", device, [])
    weights_allocated = torch.cuda.memory_allocated()
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    nvml = max((p.usedGpuMemory or 0 for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                if p.pid == os.getpid()), default=0)
    result = {**asdict(point), "peak_allocated": torch.cuda.max_memory_allocated() - baseline,
              "peak_reserved": torch.cuda.max_memory_reserved(), "nvml_process": nvml,
              "after_load_allocated": weights_allocated - baseline, "baseline_allocated": baseline,
              "seconds": round(seconds, 2),
              "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    del trainer, model
    release_library_state()
    return result


def setup_of(result: dict) -> Any:
    """The estimator's description of a measured point."""
    from tuneterm.plan.memory import MemorySetup
    from tuneterm.plan.model import LoraShape

    targets = result["targets"] if result["targets"] == "all-linear" else tuple(result["targets"].split(","))
    optim = result["optim"] or ("paged_adamw_8bit" if result["method"] == "qlora" else "adamw_torch")
    return MemorySetup(method=result["method"], micro_batch=result["batch"], seq_len=result["seq"],
                       gradient_checkpointing=result["checkpointing"], attn_implementation=result["attn"],
                       optim=optim, precision="bf16", lora=LoraShape(r=result["r"], target_modules=targets))


def estimate(result: dict) -> float:
    """tuneterm's estimate of peak allocated bytes for a measured point."""
    from tuneterm.plan.memory import estimate_memory
    from tuneterm.plan.model import load_model_facts

    facts = load_model_facts(str(CONFIGS / f"{result['model']}.json"))
    return estimate_memory(facts, setup_of(result)).peak_allocated


def table(results: list[dict]) -> str:
    lines = ["| point | peak allocated GB | peak reserved GB | NVML GB | estimate GB | error vs allocated |",
             "|---|---|---|---|---|---|"]
    for r in results:
        label = Point(**{k: r[k] for k in Point.__dataclass_fields__}).label()
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error']} | | | | |")
            continue
        guess = estimate(r)
        shown = f"{guess / GB:.2f} | {(guess - r['peak_allocated']) / r['peak_allocated']:+.1%}"
        lines.append(f"| {label} | {r['peak_allocated'] / GB:.2f} | {r['peak_reserved'] / GB:.2f} | "
                     f"{r['nvml_process'] / GB:.2f} | {shown} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", choices=("smoke", "full"), default="smoke")
    parser.add_argument("--out", type=Path, help="write the raw results here (JSON)")
    parser.add_argument("--compare", type=Path, help="print a results file against the current estimator")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/tuneterm-calibration"))
    parser.add_argument("--budget", type=float, default=1e9, help="stop starting new points after this many seconds")
    args = parser.parse_args()
    if args.compare:
        print(table(json.loads(args.compare.read_text())))
        return 0

    import pynvml

    pynvml.nvmlInit()
    from tuneterm.engine.capture import library_output_as_events

    results: list[dict] = []
    started = time.perf_counter()
    with library_output_as_events(lambda event: None):
        for point in grid(args.grid):
            if time.perf_counter() - started > args.budget:
                print(f"budget reached; skipped {point.label()}", flush=True)
                continue
            try:
                result = measure(point, random_model_dir(point.model, args.cache), args.cache / "work")
            except Exception as exc:  # record and go on: one failing point must not lose the grid
                result = {**asdict(point), "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
                import torch

                gc.collect()
                torch.cuda.empty_cache()
            results.append(result)
            shown = result.get("error") or (f"allocated {result['peak_allocated'] / GB:.2f} GB, reserved "
                                             f"{result['peak_reserved'] / GB:.2f} GB, nvml "
                                             f"{result['nvml_process'] / GB:.2f} GB, {result['seconds']} s")
            print(f"{point.label()}: {shown}", flush=True)
            if args.out:
                args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
