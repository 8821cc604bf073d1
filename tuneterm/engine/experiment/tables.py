"""An experiment's results as people read them: the app's table cells, the command line's table, and the files in
the experiment's directory.

The same results are written into the experiment's directory for people who read it later: README.md (the table,
the noise, the findings, how to go on), curves.png (every run's train and eval loss on one figure) and
results.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneterm.engine.after.compare import load_curves, save_comparison
from tuneterm.engine.after.report import clock, loss_text, perplexity
from tuneterm.engine.events import EVENTS_FILE
from tuneterm.engine.experiment.definition import short_name, value_text
from tuneterm.engine.experiment.directory import BASE_FILE, CONFIGS_DIR
from tuneterm.engine.experiment.results import ExperimentResults, Row
from tuneterm.engine.rundir.layout import CONFIG_FILE

README_FILE = "README.md"
CURVES_FILE = "curves.png"
RESULTS_FILE = "results.json"


def write_results(results: ExperimentResults, curves: bool = True) -> list[Path]:
    """README.md, results.json and, with `curves`, curves.png (once a run has logged a step) in the experiment's
    directory (an experiment draws its curves at its end; its table is written as each run ends)."""
    directory = results.experiment.directory
    written = []
    runs = [row.run_dir for row in results.rows if (row.run_dir / EVENTS_FILE).is_file()
            and (row.run_dir / CONFIG_FILE).is_file()]
    drawn = [curve for curve in load_curves(runs) if curve.train] if curves else []
    if drawn:
        written.append(save_comparison(drawn, directory / CURVES_FILE))
    (directory / RESULTS_FILE).write_text(json.dumps(results_json(results), indent=2, default=str) + "\n",
                                          encoding="utf-8")
    (directory / README_FILE).write_text(results_markdown(results), encoding="utf-8")
    return [*written, directory / RESULTS_FILE, directory / README_FILE]


COLUMNS = ("status", "train loss", "eval before", "eval best", "eval end", "perplexity", "best step", "time",
           "tokens", "stop check")


def row_cells(row: Row) -> list[str]:
    """The table's cells of a row after its varied values, as COLUMNS names them."""
    report = row.report
    state = row.state.replace("_", " ")
    if row.state == "running":
        state += f" {row.step:,}/{row.total_steps:,}" if row.total_steps else ""
    if report is None:
        return [state, *["-"] * (len(COLUMNS) - 1)]
    stop = report.stop_check
    stop_text = "-" if not stop or not stop.get("checked") else "passed" if stop.get("passed") else \
        f"{len(stop.get('runaway', []))}/{stop['checked']} ran on"
    return [state, loss_text(report.train_loss_last), loss_text(report.baseline_eval_loss),
            loss_text(row.best_eval_loss), loss_text(report.final_eval_loss), perplexity(row.best_eval_loss),
            str(report.best_step) if row.best_eval_loss is not None and report.best_step is not None else "-",
            clock(report.training_seconds), f"{report.tokens_seen:,}" if report.tokens_seen is not None else "-",
            stop_text]


MARKS = {"best": "★", "tie": "=", "": ""}


def headline(results: ExperimentResults, named: bool = True) -> str:
    """Where the experiment is, in one line (after its name, unless `named` is False)."""
    best = results.best
    where = {"running": "running", "finished": "finished", "stopped": "stopped",
             "interrupted": "interrupted (its runner ended without a last event)",
             "not started": "not started", "incomplete": "not every variation has ended"}[results.status]
    return ((f"{results.experiment.name}: " if named else "") + f"{where}, {results.done} of {results.to_run} "
            "variations done" + (f", best {best.name} ({loss_text(best.best_eval_loss)})" if best is not None else ""))


def results_markdown(results: ExperimentResults) -> str:
    experiment = results.experiment
    keys = experiment.varied
    lines = [f"# Experiment {experiment.name}", "", headline(results) + ".", "",
             f"Variations of `{experiment.base_source}` (the whole base config: `{BASE_FILE}`), each a run of its own "
             f"in this directory, trained from `{CONFIGS_DIR}/NAME.yaml`. The best is marked ★ by eval loss (never "
             "by train loss); = marks a variation within the noise of it.", "",
             "| variation | " + " | ".join(f"`{k}`" for k in keys) + " | " + " | ".join(COLUMNS) + " |",
             "|---" * (1 + len(keys) + len(COLUMNS)) + "|"]
    for row in results.rows:
        name = f"{MARKS[row.mark]} [{row.name}]({row.name}/)".strip() if row.report else row.name
        lines.append(f"| {name} | " + " | ".join(value_text(row.values.get(k)) for k in keys) + " | "
                     + " | ".join(row_cells(row)) + " |")
    noise = results.noise
    lines += ["", "## Noise", "", f"A difference of best eval losses under {noise.margin:.4f} is a tie: {noise.how}."
              if noise is not None else "Not measured yet: a run needs four evaluations after training began (or a "
                                        "repeat with another seed, `--measure-noise`)."]
    lines += ["", "## Findings", "", *[f"- {finding}" for finding in results.findings or ["None yet."]]]
    if (experiment.directory / CURVES_FILE).is_file():
        lines += ["", "## Curves", "", f"![train and eval loss of every run]({CURVES_FILE})"]
    lines += ["", "## Going on", "", "```bash",
              f"tuneterm monitor {experiment.directory}                 # the table in the app, each run a key away",
              f"tuneterm experiment --resume {experiment.directory}     # what was stopped or not yet run",
              f"tuneterm experiment --results {experiment.directory}    # this table, written again",
              "```", "", f"Each variation alone: `tuneterm train {CONFIGS_DIR}/NAME.yaml` (a scheduler's job can run "
              "it; it writes NAME/ here). `experiment.yaml` lists the variations and why any was not run.", ""]
    return "\n".join(lines)


def results_json(results: ExperimentResults) -> dict[str, Any]:
    return {
        "name": results.experiment.name, "status": results.status, "varied": results.experiment.varied,
        "noise": {"margin": results.noise.margin, "how": results.noise.how} if results.noise else None,
        "best": results.best.name if results.best else None,
        "rows": [{"variation": row.name, "values": row.values, "state": row.state, "reason": row.reason,
                  "mark": row.mark, "run_dir": str(row.run_dir),
                  **({"train_loss_last": row.report.train_loss_last, "eval_loss_before": row.report.baseline_eval_loss,
                      "eval_loss_best": row.best_eval_loss, "eval_loss_end": row.report.final_eval_loss,
                      "best_step": row.report.best_step, "training_seconds": row.report.training_seconds,
                      "tokens_seen": row.report.tokens_seen} if row.report else {})} for row in results.rows],
        "findings": results.findings,
    }


def format_results(results: ExperimentResults) -> str:
    """The table as text, for `tuneterm experiment --results`."""
    keys = results.experiment.varied
    rows = [["", "variation", *(short_name(k) for k in keys), *COLUMNS]]
    for row in results.rows:
        rows.append([MARKS[row.mark], row.name, *(value_text(row.values.get(k)) for k in keys), *row_cells(row)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [headline(results)]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(r, widths)).rstrip() for r in rows]
    noise = results.noise
    lines.append(f"Noise: a difference under {noise.margin:.4f} is a tie ({noise.how})." if noise else
                 "Noise: not measured yet (a run needs four evaluations after training began).")
    lines += [f"- {finding}" for finding in results.findings]
    return "\n".join(lines)
