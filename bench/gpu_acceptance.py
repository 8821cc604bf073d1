"""tuneterm on a GPU, in one prepared run of under 9 minutes (one H200): does what the CPU tests promise hold there?

No network: the models are random weights built from the configs of Qwen3-0.6B and Llama-3.2-3B
(tests/data/model_configs), the tokenizer is trained on the fly, the chat data is generated with lengths spread
like real chat data. It records, each part on its own (one that fails is recorded and the others go on):

  train      LoRA and QLoRA (bitsandbytes 4-bit NF4) trained through tuneterm's engine: status, steps against
             the plan's, loss, real tokens/s, padding, MFU
  memory     the plan's estimate against the measured peak (torch.cuda.max_memory_allocated, and the process's
             memory as NVML reports it) for several lengths and micro-batches, packing and offloading among them
  speed      steps/s of bare TRL SFTTrainer, of tuneterm headless and of tuneterm with its monitor attached (the
             app, headless), alternating rounds on the same data and settings: the ratios (target >= 0.98)
  packing    the same run with packing off and on: real tokens/s, steps, padding
  oom        an out-of-memory forced by capping the process's GPU memory: the run must end as RunFailed naming
             the plan's largest parts, with remedies, and the process must go on training afterwards
  nvml       the monitor's System panel and status line as they read while the run trained

It prints a table and writes gpu_acceptance.json and gpu_acceptance.md into --out. `--dry-run` runs every part
through the same code on the CPU with tiny models and a few steps (the OOM then raised by a stand-in, and the
memory and NVML readings "n/a on CPU"); the test suite runs it so that the script cannot rot.

On the lent GPU machine (torch, transformers, peft, accelerate and NVML, no network), with the wheels the
project's checkout carries in .whl/ (bash ../shared/gpu/wheels.sh):
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
        .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && PYTHONUNBUFFERED=1 python3 bench/gpu_acceptance.py --out $OUT
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONFIGS = ROOT / "tests" / "data" / "model_configs"
GB = 1e9
WORDS = ("the model reads a question and writes an answer about rivers cities numbers colours trains music code "
         "gardens weather planets history cooking maps tools light water stone paper glass wind").split()


class Budget:
    """Parts start only while time is left, so the whole run ends inside the device's limit."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


class Acceptance:
    def __init__(self, dry_run: bool, work: Path, budget: Budget):
        self.dry_run, self.work, self.budget = dry_run, work, budget
        self.rows: list[dict[str, Any]] = []
        self.done: dict[str, dict[str, Any]] = {}
        """A dry run's runs by their settings: one tiny run serves every part that asks for the same."""
        self.sizes: dict[str, Any] = (
            {"steps": 3, "examples": 32, "words": (6, 60), "rounds": 1, "batch": 4, "timed_from": 1} if dry_run else
            {"steps": 40, "examples": 1200, "words": (40, 700), "rounds": 2, "batch": 8, "timed_from": 8})

    # Building blocks ----------------------------------------------------------------------------------------

    def part(self, name: str, measure: Callable[[], list[dict[str, Any]]], needs: float = 30.0) -> None:
        """One part of the acceptance; its failure is a row, never the end of the run."""
        if self.budget.left() < needs:
            self.rows.append({"part": name, "what": "skipped", "result": f"{self.budget.left():.0f} s left"})
            return
        started, cpu = time.monotonic(), time.process_time()
        try:
            rows = measure()
        except Exception as exc:  # recorded, and the next part runs
            rows = [{"what": "failed", "result": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                     "traceback": traceback.format_exc()[-3000:]}]
        for row in rows:
            self.rows.append({"part": name, **row})
            print(f"[{name}] {row.get('what')}: {row.get('result')}", flush=True)
        print(f"[{name}] {time.monotonic() - started:.0f} s ({time.process_time() - cpu:.0f} CPU-s)", flush=True)
        release()

    def model(self, name: str) -> Path:
        """A random-weight model of a real architecture (shrunk for a dry run), with a trained tokenizer."""
        from transformers import AutoConfig, AutoModelForCausalLM

        from tuneterm.demo import CHAT_TEMPLATE, build_tokenizer

        target = self.work / "models" / name
        if (target / "config.json").is_file():
            return target
        config = AutoConfig.from_pretrained(str(CONFIGS / f"{name}.json"))
        tokenizer = build_tokenizer([" ".join(WORDS)] * 8, CHAT_TEMPLATE, vocab_size=400)
        if self.dry_run:
            shrunk = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                      "num_key_value_heads": 2, "head_dim": 16, "vocab_size": len(tokenizer)}
            if getattr(config, "layer_types", None):
                shrunk["layer_types"] = config.layer_types[:2]
            config = type(config)(**{**config.to_dict(), **shrunk})
        config.pad_token_id, config.eos_token_id, config.bos_token_id = (tokenizer.pad_token_id,
                                                                        tokenizer.eos_token_id, None)
        import torch

        with torch.device(self.device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if self.cuda else torch.float32)
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        del model
        release()
        return target

    def data(self, name: str, examples: int, words: tuple[int, int]) -> Path:
        """Chat records whose replies run from `words[0]` to `words[1]` words, most of them short, as chat data is."""
        path = self.work / "data" / f"{name}.jsonl"
        if path.is_file():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = random.Random(3407)
        with open(path, "w", encoding="utf-8") as handle:
            for _ in range(examples):
                length = min(words[1], words[0] + int(rng.expovariate(3 / (words[1] - words[0]))))
                reply = " ".join(rng.choice(WORDS) for _ in range(length))
                messages = [{"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(12))},
                            {"role": "assistant", "content": reply}]
                handle.write(json.dumps({"messages": messages}) + "\n")
        return path

    @property
    def cuda(self) -> bool:
        import torch

        return not self.dry_run and torch.cuda.is_available()

    @property
    def device(self) -> str:
        return "cuda" if self.cuda else "cpu"

    def settings(self, model: Path, data: Path, method: str = "lora", **training: Any) -> dict[str, Any]:
        values = {"learning_rate": 2e-4, "max_steps": self.sizes["steps"], "per_device_train_batch_size":
                  self.sizes["batch"], "gradient_accumulation_steps": 1, "gradient_checkpointing": True,
                  "save_steps": 10_000, "load_best_model_at_end": False, "warmup_steps": 0.1, "max_length": 1024,
                  "logging_steps": 1}
        if self.dry_run:
            values.update(gradient_checkpointing=False, max_length=128, cpu_threads=1)
        values.update(training)
        return {"method": method, "model": {"path": str(model)}, "data": {"train": str(data), "val_size": 0},
                "lora": {"r": 16, "lora_alpha": 16}, "training": values}

    def run(self, settings: dict[str, Any]) -> dict[str, Any]:
        """tuneterm's engine, headless, as `tuneterm train` runs it: what its events and the device say."""
        from tuneterm.config import config_from_mapping
        from tuneterm.engine.run.plans import new_run
        from tuneterm.engine.run.runner import run

        key = json.dumps(settings, sort_keys=True)
        if self.dry_run and key in self.done:
            return self.done[key]
        reset_peaks()
        events: list[Any] = []
        result = run(new_run(config_from_mapping(settings), self.work / "runs"), events.append)
        self.done[key] = {**summary_of(events, result, self.sizes["timed_from"]), **peaks()}
        return self.done[key]

    # The parts ----------------------------------------------------------------------------------------------

    def train(self) -> list[dict[str, Any]]:
        model, data = self.model("qwen3-0.6b"), self.data("chat", self.sizes["examples"], self.sizes["words"])
        rows = []
        for method in ("lora", "qlora"):
            found = self.run(self.settings(model, data, method))
            ok = found["status"] == "completed" and found["steps"] == found["planned_steps"]
            rows.append({"what": f"{method} Qwen3-0.6B", "ok": ok, **found,
                         "result": f"{found['status']}, {found['steps']}/{found['planned_steps']} steps, loss "
                                   f"{found['first_loss']:.3f} -> {found['last_loss']:.3f}, "
                                   f"{found['tokens_per_second']:,.0f} real tok/s, MFU {found['mfu']}"})
        return rows

    def memory(self) -> list[dict[str, Any]]:
        points: list[tuple[str, str, int, int, dict[str, Any]]] = (
            [("qwen3-0.6b", "lora", 128, 2, {"packing": True})]
            if self.dry_run else
            [("qwen3-0.6b", "lora", 512, 8, {}), ("qwen3-0.6b", "lora", 2048, 4, {}),
             ("qwen3-0.6b", "qlora", 2048, 4, {}), ("qwen3-0.6b", "lora", 4096, 2, {}),
             ("qwen3-0.6b", "lora", 1024, 4, {"packing": True}),
             ("qwen3-0.6b", "lora", 2048, 4, {"gradient_checkpointing": False}),
             ("qwen3-0.6b", "lora", 2048, 4, {"gradient_checkpointing": False, "activation_offloading": True}),
             ("llama-3.2-3b", "lora", 2048, 2, {}), ("llama-3.2-3b", "qlora", 2048, 4, {})])
        rows: list[dict[str, Any]] = []
        for name, method, length, batch, extra in points:
            if self.budget.left() < 60 and rows:
                rows.append({"what": f"{name} {method} {length}x{batch} {extra}", "result": "skipped (time)"})
                continue
            rows.append(self.memory_point(name, method, length, batch, extra))
        return rows

    def memory_point(self, name: str, method: str, length: int, batch: int, extra: dict[str, Any]) -> dict[str, Any]:
        """Three steps on full-length rows through tuneterm's own loading and trainer, against the plan."""
        import numpy as np
        import torch
        from datasets import Dataset

        from tuneterm.config import config_from_mapping
        from tuneterm.data.tokenizer import load_tokenizer
        from tuneterm.engine.loading import load_model
        from tuneterm.engine.run.trainer import build_trainer
        from tuneterm.hardware import CPU, Device
        from tuneterm.plan.memory import estimate_memory
        from tuneterm.plan.planner import memory_setup, model_facts
        from tuneterm.plan.resolve import resolve

        model_dir = self.model(name)
        device = Device("cuda", torch.cuda.get_device_name(0), True) if self.cuda else CPU
        settings = self.settings(model_dir, self.work / "unused.jsonl", method, per_device_train_batch_size=batch,
                                 max_length=length, max_steps=3, **extra)
        config = resolve(config_from_mapping(settings), device, train_lengths=np.full(batch * 3, length))
        release()
        reset_peaks()
        before = allocated()
        model = load_model(config, config.get("training.precision"), device)
        tokenizer, _ = load_tokenizer(config)
        generator = torch.Generator().manual_seed(0)
        vocab = len(tokenizer)
        rows = torch.randint(10, vocab, (batch * 3, length), generator=generator).tolist()
        trainer = build_trainer(config, model, tokenizer, Dataset.from_dict({"input_ids": rows, "labels": rows}),
                                None, self.work / "memory-out", device, [])
        trainer.train()
        measured = {key: value - before if key == "peak_allocated" and value is not None else value
                    for key, value in peaks().items()}
        estimate = estimate_memory(model_facts(config), memory_setup(config, None, device=device.kind))
        del trainer, model
        what = f"{name} {method} {length} x {batch}" + "".join(f" {k}={v}" for k, v in extra.items())
        if measured["peak_allocated"] is None:
            return {"what": what, "estimate_allocated": estimate.peak_allocated, **measured,
                    "result": f"plan {estimate.peak_allocated / GB:.2f} GB; measured n/a on CPU"}
        error = estimate.peak_allocated / measured["peak_allocated"] - 1
        nvml = measured["nvml_process"]
        return {"what": what, "estimate_allocated": estimate.peak_allocated, "estimate_nvml": estimate.total_bytes,
                **measured, "error": error,
                "result": f"plan {estimate.peak_allocated / GB:.2f} GB, measured {measured['peak_allocated'] / GB:.2f}"
                          f" GB allocated ({error:+.1%}); NVML {nvml / GB if nvml else 0:.2f} GB against the plan's "
                          f"{estimate.total_bytes / GB:.2f} GB"}

    def speed(self) -> list[dict[str, Any]]:
        model, data = self.model("qwen3-0.6b"), self.data("chat", self.sizes["examples"], self.sizes["words"])
        settings = self.settings(model, data)
        measured: dict[str, list[float]] = {"bare TRL": [], "tuneterm headless": [], "tuneterm with the monitor": []}
        screens: dict[str, str] = {}
        for _ in range(self.sizes["rounds"]):
            measured["bare TRL"].append(self.bare_trl(settings))
            measured["tuneterm headless"].append(self.run(settings)["steps_per_second"])
            pace, screens = asyncio.run(self.monitored(settings))
            measured["tuneterm with the monitor"].append(pace)
        bare = statistics.median(measured["bare TRL"])
        rows = []
        for name, values in measured.items():
            ratio = statistics.median(values) / bare
            judged = {"ok": ratio >= 0.98} if self.cuda and name != "bare TRL" else {}  # a CPU's 4 steps say nothing
            rows.append({"what": name, "steps_per_second": values, "ratio_to_bare": ratio, **judged,
                         "result": f"{statistics.median(values):.2f} steps/s (rounds: "
                                   f"{', '.join(f'{v:.2f}' for v in values)}); {ratio:.3f} of bare TRL"})
        rows.append({"what": "monitor screens", "result": screens.get("status", ""), **screens})
        return rows

    def bare_trl(self, settings: dict[str, Any]) -> float:
        """Steps per second of a plain SFTTrainer on the same tokenised data and settings."""
        import torch
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, TrainerCallback
        from trl import SFTConfig, SFTTrainer

        from tuneterm.config import config_from_mapping
        from tuneterm.data.prepare import prepare
        from tuneterm.data.tokenizer import load_tokenizer

        config = config_from_mapping(settings)
        tokenizer, _ = load_tokenizer(config)
        train, _ = prepare(config, tokenizer, None).to_datasets()
        training = settings["training"]
        times: dict[int, float] = {}

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
                times[state.global_step] = time.perf_counter()

        arguments = SFTConfig(
            output_dir=str(self.work / "bare"), per_device_train_batch_size=training["per_device_train_batch_size"],
            gradient_accumulation_steps=1, learning_rate=training["learning_rate"], max_steps=training["max_steps"],
            lr_scheduler_type="cosine", warmup_steps=0.1, weight_decay=0.01, optim="adamw_torch", logging_steps=1,
            save_strategy="no",
            report_to="none", use_cpu=not self.cuda, bf16=self.cuda, fp16=False, disable_tqdm=True,
            activation_checkpointing=training["gradient_checkpointing"], seed=3407,
            max_length=training["max_length"])
        if not self.cuda:
            torch.set_num_threads(1)
        model = AutoModelForCausalLM.from_pretrained(settings["model"]["path"],
                                                     dtype=torch.bfloat16 if self.cuda else torch.float32)
        trainer = SFTTrainer(model=model, args=arguments, train_dataset=train, processing_class=tokenizer,
                             callbacks=[Clock()], peft_config=LoraConfig(r=16, lora_alpha=16, task_type="CAUSAL_LM",
                                                                          target_modules="all-linear"))
        trainer.train()
        first, last = self.sizes["timed_from"], training["max_steps"]
        del trainer, model
        release()
        return (last - first) / (times[last] - times[first])

    async def monitored(self, settings: dict[str, Any]) -> tuple[float, dict[str, str]]:
        """tuneterm's run inside the app with its monitor attached (headless): steps/s, and what its status line
        and System panel said at the end."""
        from tuneterm.config import config_from_mapping
        from tuneterm.engine.events import StepLogged, read_events
        from tuneterm.engine.run.plans import new_run
        from tuneterm.ui.app import make_app
        from tuneterm.ui.screens.monitor import MonitorScreen
        from tuneterm.ui.services import Services
        from tuneterm.ui.widgets.monitor_panes import StatusPane, SystemDetail

        runs = self.work / "monitored"
        app = make_app(Services(runs_dir=runs, over_ssh=False))
        async with app.run_test(size=(100, 30)) as pilot:
            plan = new_run(config_from_mapping(settings), runs)
            app.start(plan, detached=False)
            while not isinstance(app.screen, MonitorScreen):
                await pilot.pause(0.05)
            monitor = app.screen
            while monitor.view.result is None:
                await asyncio.sleep(0.1)
            monitor.redraw()
            monitor.read_system()
            await pilot.pause()
            screens = {"status": plain(monitor.query_one(StatusPane)), "system": plain(monitor.query_one(SystemDetail))}
        steps = {e.step: e.time for e in read_events(plan.run_dir / "events.jsonl") if isinstance(e, StepLogged)}
        first, last = self.sizes["timed_from"], max(steps)
        return (last - first) / (steps[last] - steps[first]), screens

    def packing(self) -> list[dict[str, Any]]:
        model, data = self.model("qwen3-0.6b"), self.data("chat", self.sizes["examples"], self.sizes["words"])
        rows = []
        for packing in (False, True):
            found = self.run(self.settings(model, data, packing=packing))
            rows.append({"what": f"packing {'on' if packing else 'off'}", **found,
                         "result": f"{found['status']}, {found['steps_per_epoch']} steps per epoch, "
                                   f"{found['tokens_per_second']:,.0f} real tok/s, padding {found['padding']:.0%}"})
        rows.append({"what": "on / off", "result": f"{rows[1]['tokens_per_second'] / rows[0]['tokens_per_second']:.2f}"
                                                   " x the real tokens per second"})
        return rows

    def oom(self) -> list[dict[str, Any]]:
        """A real CUDA out-of-memory (the process's memory capped just above the weights), then a run after it."""
        model, data = self.model("qwen3-0.6b"), self.data("chat", self.sizes["examples"], self.sizes["words"])
        settings = self.settings(model, data, per_device_train_batch_size=32, gradient_checkpointing=False,
                                 max_length=1024 if self.cuda else 128)
        undo = cap_memory(self.cuda, gigabytes=3.0)
        try:
            found = self.run(settings)
        finally:
            undo()
        ok = found["status"] == "failed" and found["reason"].startswith("Out of GPU memory during training")
        after = self.run(self.settings(model, data, max_steps=1))
        return [{"what": "forced OOM" + ("" if self.cuda else " (a stand-in raised on the CPU)"), "ok": ok,
                 **found, "result": f"{found['status']}: {found['reason'][:160]}; remedies: {found['remedies']}"},
                {"what": "a run after it", "ok": after["status"] == "completed", **after,
                 "result": f"{after['status']} in {after['steps']} steps"}]

    def nvml(self) -> list[dict[str, Any]]:
        from dataclasses import asdict

        from tuneterm.hardware import read_gpus

        survey = read_gpus()
        if not survey.gpus:
            return [{"what": "NVML", "result": f"no GPU: {survey.reason}"}]
        return [{"what": f"GPU {g.index}", **asdict(g), "result": f"{g.name}: util {g.utilization}%, "
                 f"{g.memory_used / GB:.1f}/{g.memory_total / GB:.1f} GB, {g.temperature} C, {g.power_watts} W"}
                for g in survey.gpus]


# ----------------------------------------------------------------------------------------------------------------


def plain(pane: Any) -> str:
    """The text a pane of the monitor shows, without its markup."""
    from textual.content import Content

    return Content.from_markup(pane._text or "").plain


def summary_of(events: list[Any], result: Any, timed_from: int) -> dict[str, Any]:
    from tuneterm.engine.events import RunFailed, RunStarted, StepLogged

    started = next((e for e in events if isinstance(e, RunStarted)), None)
    steps = [e for e in events if isinstance(e, StepLogged)]
    timed = [e for e in steps if e.step >= timed_from]
    seconds = timed[-1].time - timed[0].time if len(timed) > 1 else 0.0
    tokens = [e.tokens_per_second for e in timed[1:] if e.tokens_per_second]
    padding = [e.padding_share for e in steps if e.padding_share is not None]
    pace = statistics.fmean(tokens) if tokens else 0.0
    mfu = ("n/a" if started is None or started.peak_flops is None or started.flops_per_token is None
           else f"{pace * started.flops_per_token / started.peak_flops:.1%}")
    failed = isinstance(result, RunFailed)
    return {"status": "failed" if failed else result.status, "steps": len(steps),
            "planned_steps": started.total_steps if started else None,
            "steps_per_epoch": started.steps_per_epoch if started else None,
            "steps_per_second": (len(timed) - 1) / seconds if seconds else 0.0, "tokens_per_second": pace,
            "padding": statistics.fmean(padding) if padding else 0.0,
            "first_loss": steps[0].loss if steps else math.nan, "last_loss": steps[-1].loss if steps else math.nan,
            "mfu": mfu if started is None or started.peak_flops else started.peak_flops_why,
            "reason": result.reason if failed else "",
            "remedies": [r["set"] for r in result.remedies] if failed else []}


def release() -> None:
    from tuneterm.engine.run.runner import release_library_state

    release_library_state()
    gc.collect()


def reset_peaks() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def allocated() -> int:
    import torch

    return torch.cuda.memory_allocated() if torch.cuda.is_available() else 0


def peaks() -> dict[str, Any]:
    """The peak allocated since the last reset, and the process's memory as NVML counts it (None on a CPU)."""
    import torch

    if not torch.cuda.is_available():
        return {"peak_allocated": None, "peak_reserved": None, "nvml_process": None}
    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
    nvml = max((p.usedGpuMemory or 0 for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                if p.pid == os.getpid()), default=None)
    return {"peak_allocated": torch.cuda.max_memory_allocated(), "peak_reserved": torch.cuda.max_memory_reserved(),
            "nvml_process": nvml}


def cap_memory(cuda: bool, gigabytes: float) -> Callable[[], None]:
    """Cap this process's GPU memory (the caching allocator then raises a real out-of-memory error), or on the CPU
    make the first training forward pass raise the error a GPU would; returns what undoes it."""
    import torch

    if cuda:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, gigabytes * GB / total))
        return lambda: torch.cuda.set_per_process_memory_fraction(1.0)

    original = torch.nn.Module.__call__

    def calling(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.training and type(self).__name__.endswith("ForCausalLM"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (stand-in on the CPU)")
        return original(self, *args, **kwargs)

    torch.nn.Module.__call__ = calling  # type: ignore[method-assign]
    return lambda: setattr(torch.nn.Module, "__call__", original)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| part | what | result |", "|---|---|---|"]
    for row in rows:
        mark = "" if "ok" not in row else " (ok)" if row["ok"] else " (NOT OK)"
        lines.append(f"| {row['part']} | {row['what']}{mark} | {str(row.get('result', '')).replace('|', '/')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="the same parts on the CPU, tiny and fast")
    parser.add_argument("--out", type=Path, default=Path("."), help="where gpu_acceptance.json and .md go")
    parser.add_argument("--budget", type=float, default=510, help="seconds after which no part starts")
    args = parser.parse_args(argv)
    budget = Budget(args.budget)
    from transformers.utils import logging as hf_logging

    from tuneterm.engine.capture import library_output_as_events

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="tuneterm-acceptance-") as folder, \
            library_output_as_events(lambda event: None):
        acceptance = Acceptance(args.dry_run, Path(folder), budget)
        acceptance.part("nvml", acceptance.nvml, needs=0)
        acceptance.part("train", acceptance.train)
        acceptance.part("speed", acceptance.speed, needs=90)
        acceptance.part("packing", acceptance.packing)
        acceptance.part("oom", acceptance.oom)
        acceptance.part("memory", acceptance.memory, needs=60)
        acceptance.part("nvml", acceptance.nvml, needs=0)
    rows = acceptance.rows
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_acceptance.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")
    (args.out / "gpu_acceptance.md").write_text(table(rows) + "\n")
    print(table(rows))
    failed = [row for row in rows if row.get("ok") is False or row["what"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
