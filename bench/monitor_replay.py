"""Opening a long finished run in the monitor: time and memory.

Writes the events.jsonl of a 100,000-step run (a StepLogged per step, an evaluation every 500 steps, a checkpoint
with each), then opens it with `tuneterm monitor` as a person would (the app, headless, 120x40) and measures the
time until the whole run is replayed and drawn, and how much the process's resident memory grew (after a first
opening of a short run has loaded the app's modules). Repeats and prints the median and the spread.

    python bench/monitor_replay.py [--steps 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def write_run(run_dir: Path, steps: int) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("method: lora\nmodel:\n  path: model\n")
    started = {"event": "RunStarted", "time": 0.0, "run_dir": str(run_dir), "defaulted": [], "notes": {},
               "config": {"training": {"eval_steps": 500, "learning_rate": 2e-4, "lr_scheduler_type": "cosine",
                                       "warmup_steps": 0.05, "early_stopping_patience": 3}},
               "train_examples": 800_000, "eval_examples": 8000, "steps_per_epoch": 50_000, "total_steps": steps,
               "trainable_params": 10_000_000, "total_params": 600_000_000, "device": "NVIDIA H100"}
    with open(run_dir / "events.jsonl", "w") as handle:
        handle.write(json.dumps(started) + "\n")
        best = math.inf
        for step in range(1, steps + 1):
            loss = 2.0 * math.exp(-step / 20_000) + 0.5 + 0.05 * math.sin(step)
            handle.write(json.dumps({"event": "StepLogged", "time": step * 0.2, "step": step, "max_steps": steps,
                                     "epoch": step / 50_000, "loss": loss, "learning_rate": 2e-4,
                                     "grad_norm": 1.0, "tokens_per_second": 50_000.0}) + "\n")
            if step % 500 == 0:
                eval_loss = loss + 0.1
                best = min(best, eval_loss)
                handle.write(json.dumps({"event": "EvalFinished", "time": step * 0.2, "step": step,
                                         "epoch": step / 50_000, "eval_loss": eval_loss, "baseline_eval_loss": 3.0,
                                         "best_eval_loss": best, "best_step": step, "evals_since_improvement": 0,
                                         "patience": 3}) + "\n")
                handle.write(json.dumps({"event": "CheckpointSaved", "time": step * 0.2, "step": step,
                                         "path": str(run_dir / f"checkpoint-{step}")}) + "\n")
        handle.write(json.dumps({"event": "RunFinished", "time": steps * 0.2, "status": "completed",
                                 "run_dir": str(run_dir), "global_step": steps, "best_eval_loss": best,
                                 "outcome": "improved"}) + "\n")


async def open_once(run_dir: Path) -> tuple[float, float]:
    import psutil

    from tuneterm.ui.app import Opening, make_app
    from tuneterm.ui.screens.monitor import MonitorScreen
    from tuneterm.ui.services import Services
    from tuneterm.ui.widgets.chart import LineChart

    process = psutil.Process()
    before = process.memory_info().rss
    started = time.perf_counter()
    app = make_app(Services(runs_dir=run_dir.parent), Opening("monitor", run_dir=run_dir))
    async with app.run_test(size=(120, 40)) as pilot:
        while not (isinstance(app.screen, MonitorScreen) and app.screen.view.result is not None):
            await pilot.pause(0.01)
        monitor = app.screen
        monitor.redraw()  # what the next timer tick draws
        monitor.query_one("#loss-chart", LineChart).redraw_now()
        await pilot.pause()
        elapsed = time.perf_counter() - started
        grown = process.memory_info().rss - before
    return elapsed, grown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        short, run_dir = Path(folder) / "runs" / "short-run", Path(folder) / "runs" / "long-run"
        write_run(short, 10)
        write_run(run_dir, args.steps)
        size = (run_dir / "events.jsonl").stat().st_size / 1e6
        asyncio.run(open_once(short))  # the first opening imports the app's modules: not the replay's memory
        results = [asyncio.run(open_once(run_dir)) for _ in range(args.repeats)]
    times = [r[0] for r in results]
    grown = [r[1] / 1e6 for r in results]
    growth = ", ".join(f"{g:.0f}" for g in grown)
    print(f"{args.steps:,} logged steps ({size:.0f} MB of events): open and draw median "
          f"{statistics.median(times):.2f} s (min {min(times):.2f}, max {max(times):.2f}); "
          f"resident memory grown by the replay: {growth} MB over {len(grown)} openings")


if __name__ == "__main__":
    main()
