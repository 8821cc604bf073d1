"""What watching a run costs: training speed with the monitor attached, the monitor's key-to-screen latency
while training runs, and its CPU use while it waits for a step.

(a) Alternating rounds on the demo model and data (LoRA r16, micro-batch 8, 200 steps, no evaluation): bare TRL
    SFTTrainer with the same settings and tokenised data, and tuneterm's engine run inside the app (headless,
    100x30) with the monitor showing it. Throughput is steps per second between step 20 and the last step (both
    timed at the Trainer's step-end); the ratio monitored / bare is printed with each round's numbers. Each run
    is a fresh process, as each is for a person: a process whose main thread trained once leaves OpenMP's worker
    pool behind, and any later training in another thread then runs at about half speed.
(b) In two more monitored runs, a key every quarter second (switching tabs): the time from the key to the next
    repaint of the screen, p50 and p95.
(c) A monitor following a live run that writes nothing: the process's CPU time over 10 s, as % of one core.

    python bench/monitor_overhead.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STEPS = 200
FIRST_TIMED = 20


def settings(directory: Path) -> dict:
    return {"method": "lora", "model": {"path": str(directory / "model")},
            "data": {"train": str(directory / "data" / "train.jsonl"), "val_size": 0},
            "lora": {"r": 16, "lora_alpha": 32},
            "training": {"learning_rate": 3e-3, "max_steps": STEPS, "per_device_train_batch_size": 8,
                         "gradient_accumulation_steps": 1, "gradient_checkpointing": False, "cpu_threads": 2,
                         "warmup_steps": 0.1, "save_steps": 1000, "max_length": 128}}


def bare_trl(directory: Path, output: Path) -> float:
    """Steps per second of a plain SFTTrainer on the same tokenised data and settings."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tuneterm.config import config_from_mapping
    from tuneterm.data.prepare import prepare

    torch.set_num_threads(2)
    config = config_from_mapping(settings(directory))
    tokenizer = AutoTokenizer.from_pretrained(str(directory / "model"))
    train, _ = prepare(config, tokenizer, 512).to_datasets()
    times: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            times[state.global_step] = time.perf_counter()

    arguments = SFTConfig(output_dir=str(output), per_device_train_batch_size=8, gradient_accumulation_steps=1,
                          learning_rate=3e-3, max_steps=STEPS, lr_scheduler_type="cosine", warmup_steps=0.1,
                          weight_decay=0.01, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
                          bf16=False, fp16=False, disable_tqdm=True, activation_checkpointing=False, seed=3407)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(str(directory / "model")), args=arguments,
                         train_dataset=train, processing_class=tokenizer, callbacks=[Clock()],
                         peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
    trainer.train()
    return (STEPS - FIRST_TIMED) / (times[STEPS] - times[FIRST_TIMED])


async def monitored(directory: Path, runs: Path, keys: bool) -> tuple[float, list[float]]:
    """Steps per second of tuneterm's run in the app with the monitor attached, and (with `keys`) the latency of
    keys pressed meanwhile."""
    from tuneterm.config import config_from_mapping
    from tuneterm.engine.events import StepLogged, read_events
    from tuneterm.engine.run.plans import new_run
    from tuneterm.ui.app import make_app
    from tuneterm.ui.screens.monitor import MonitorScreen
    from tuneterm.ui.services import Services

    painted: list[float] = []
    switch_tab = MonitorScreen.action_tab

    def timed(self: MonitorScreen, tab: str) -> None:  # the key's action, then the time of the next repaint
        switch_tab(self, tab)
        self.call_after_refresh(lambda: painted.append(time.perf_counter()))

    MonitorScreen.action_tab = timed  # type: ignore[method-assign]
    app = make_app(Services(runs_dir=runs, over_ssh=False))
    latencies: list[float] = []
    async with app.run_test(size=(100, 30)) as pilot:
        plan = new_run(config_from_mapping(settings(directory)), runs)
        app.start(plan, detached=False)
        while not isinstance(app.screen, MonitorScreen):
            await pilot.pause(0.05)
        monitor = app.screen
        while monitor.view.result is None and not keys:
            await asyncio.sleep(0.1)
        while monitor.view.result is None:
            seen, pressed = len(painted), time.perf_counter()
            app.simulate_key("2" if len(latencies) % 2 == 0 else "1")
            while len(painted) == seen and monitor.view.result is None:
                await asyncio.sleep(0.002)
            if len(painted) > seen:
                latencies.append(painted[-1] - pressed)
            await asyncio.sleep(0.25)
    MonitorScreen.action_tab = switch_tab  # type: ignore[method-assign]
    steps = {e.step: e.time for e in read_events(plan.run_dir / "events.jsonl") if isinstance(e, StepLogged)}
    return (STEPS - FIRST_TIMED) / (steps[STEPS] - steps[FIRST_TIMED]), latencies


async def idle_cpu(runs: Path) -> float:
    import psutil

    from tuneterm.engine.events import EVENTS_FILE, RunStarted
    from tuneterm.engine.rundir.layout import holding_run_lock
    from tuneterm.ui.app import Opening, make_app
    from tuneterm.ui.screens.monitor import MonitorScreen
    from tuneterm.ui.services import Services

    run_dir = runs / "idle-run"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("method: lora\n")
    started = RunStarted(run_dir=str(run_dir), config={}, defaulted=[], notes={}, train_examples=1, eval_examples=0,
                         steps_per_epoch=1, total_steps=10, trainable_params=1, total_params=1, device="CPU")
    (run_dir / EVENTS_FILE).write_text(started.to_json() + "\n")
    process = psutil.Process()
    with holding_run_lock(run_dir):  # live, but writing nothing
        app = make_app(Services(runs_dir=runs, over_ssh=False), Opening("monitor", run_dir=run_dir))
        async with app.run_test(size=(100, 30)) as pilot:
            while not isinstance(app.screen, MonitorScreen):
                await pilot.pause(0.05)
            await asyncio.sleep(2)
            before, wall = sum(process.cpu_times()[:2]), time.perf_counter()
            await asyncio.sleep(10)
            used, elapsed = sum(process.cpu_times()[:2]) - before, time.perf_counter() - wall
    return 100 * used / elapsed


def measure(variant: str, folder: str) -> None:
    """One measurement in this fresh process, printed as its last line."""
    from transformers.utils import logging as hf_logging

    from tuneterm.demo import demo_dir

    hf_logging.disable_progress_bar()
    directory, folder_path = demo_dir(), Path(folder)
    if variant == "bare":
        print(bare_trl(directory, folder_path / "bare"))
    elif variant == "monitored":
        print(asyncio.run(monitored(directory, folder_path / "runs", keys=False))[0])
    elif variant == "keys":
        print(" ".join(map(str, asyncio.run(monitored(directory, folder_path / "runs", keys=True))[1])))
    else:
        print(asyncio.run(idle_cpu(folder_path / "idle")))


def in_fresh_process(variant: str, folder: str) -> list[float]:
    done = subprocess.run([sys.executable, __file__, "--measure", variant, folder], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the {variant} measurement failed:\n{done.stderr[-3000:]}")
    return [float(x) for x in done.stdout.strip().splitlines()[-1].split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--measure", nargs=2, metavar=("VARIANT", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(*args.measure)
        return
    from tuneterm.demo import demo_dir

    demo_dir()  # built once, before anything is timed
    bare, watched, latencies = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for round_number in range(args.rounds):
            bare += in_fresh_process("bare", folder)
            watched += in_fresh_process("monitored", folder)
            print(f"round {round_number + 1}: bare TRL {bare[-1]:.2f} steps/s, with the monitor {watched[-1]:.2f} "
                  f"steps/s (ratio {watched[-1] / bare[-1]:.3f})", flush=True)
        for _ in range(2):
            latencies += in_fresh_process("keys", folder)
        idle = in_fresh_process("idle", folder)[0]
    ratios = [w / b for w, b in zip(watched, bare)]
    latencies.sort()
    print(f"(a) throughput with the monitor / bare TRL: median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}) over {len(ratios)} alternating rounds")
    print(f"(b) key to updated screen while training: p50 {1000 * statistics.median(latencies):.0f} ms, p95 "
          f"{1000 * latencies[int(0.95 * (len(latencies) - 1))]:.0f} ms over {len(latencies)} keys")
    print(f"(c) monitor following a live run that writes nothing: {idle:.1f}% of one core")


if __name__ == "__main__":
    main()
