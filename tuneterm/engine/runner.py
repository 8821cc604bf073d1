"""run(plan, sink, control): one fine-tuning run from config to saved, verified adapter.

The TUI's worker thread, the headless `tuneterm train`, a detached run and a run under `accelerate launch` all
call this function. It knows nothing of who is watching: it reports through the event sink (and always to
RUN_DIR/events.jsonl) and listens to the control object between optimizer steps. It may run in any thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneterm.config import RunConfig, load_config, parse_override
from tuneterm.data.prepare import PreparedData, prepare
from tuneterm.data.tokenizer import load_tokenizer
from tuneterm.engine import failures, fingerprint
from tuneterm.engine.capture import library_output_as_events
from tuneterm.engine.channel import ChannelListener
from tuneterm.engine.control import RunControl
from tuneterm.engine.events import (
    EVENTS_FILE,
    Event,
    EventLog,
    EventSink,
    Outcome,
    PhaseProgressed,
    PhaseStarted,
    RunFailed,
    RunFinished,
    RunStarted,
    RunStatus,
    WarningIssued,
    read_events,
)
from tuneterm.engine.loading import detect_device, load_model
from tuneterm.engine.rundir import CONFIG_FILE, DEFAULT_RUNS_ROOT, create_run_dir, holding_run_lock, resume_point
from tuneterm.errors import Cancelled, ConfigError, Location, Problem, RunDirError, TuneTermError, first_sentence
from tuneterm.hardware import CPU, Device, choose_cpu_threads
from tuneterm.plan.planner import model_facts, startup_problems
from tuneterm.plan.resolve import resolve, schedule_of
from tuneterm.work import Progress, Work, import_training_libraries

ADAPTER_CHECK_FILE = "adapter_check.json"
ERROR_LOG = "error.log"

# Keys of the training section that are tuneterm's own rather than SFTConfig fields.
_TUNETERM_TRAINING_KEYS = ("precision", "gradient_checkpointing", "eval_interval_epochs", "early_stopping_patience",
                           "early_stopping_threshold", "cpu_threads")


@dataclass(frozen=True)
class RunPlan:
    config: RunConfig
    run_dir: Path
    resume_from: Path | None = None
    skipped: tuple[str, ...] = ()
    """Newer checkpoints that resuming passes over, each with why."""


def new_run(config: RunConfig, runs_root: Path = DEFAULT_RUNS_ROOT) -> RunPlan:
    """A new run directory holding the run's config from the start, so that a run which fails before training
    is still a run: listed as failed, with its config to start it again. A config that cannot start (no data, a
    mistyped path, an output directory in use) is refused before anything is written."""
    problems = startup_problems(config)
    if problems:
        raise ConfigError(problems)
    run_dir = create_run_dir(config, runs_root)
    run_config(config).save(run_dir / CONFIG_FILE)
    return RunPlan(config, run_dir)


def prepared_run(run_dir: Path) -> RunPlan:
    """A run directory made by new_run whose run has not started yet (a detached run starts this way)."""
    return RunPlan(load_config(run_dir / CONFIG_FILE), run_dir)


def run_config(config: RunConfig) -> RunConfig:
    """The config as a run directory keeps it: without the output directory, so that running it again makes a
    new run instead of being refused for writing into this one."""
    if not config.get("training.output_dir"):
        return config
    return config.resolved({"training.output_dir": (None, "each run gets a new directory; this one was "
                                                          f"{config.get('training.output_dir')}")})


def resume_run(run_dir: Path, overrides: Iterable[str] = ()) -> RunPlan:
    """Continue a stopped or interrupted run from its last complete checkpoint, with its saved config, after
    checking that the data, the model and the config are still those the run started from. `overrides` (--set)
    may change only what does not change what is trained (the eval batch, gradient checkpointing, patience...)."""
    checkpoint, skipped = resume_point(run_dir)
    events_path = run_dir / EVENTS_FILE
    if events_path.exists():
        finished = [e for e in read_events(events_path) if isinstance(e, RunFinished)]
        if finished and finished[-1].status in ("completed", "early_stopped"):
            raise RunDirError(f"{run_dir}: this run already {finished[-1].status.replace('_', ' ')}; "
                              f"start a new one with tuneterm train {run_dir / CONFIG_FILE}")
    config = load_config(run_dir / CONFIG_FILE, overrides=overrides)
    changing = {parse_override(text)[0] for text in overrides} - fingerprint.CHANGEABLE_ON_RESUME
    if changing:
        raise ConfigError([Problem("cannot change when resuming: the checkpoint's optimizer state and schedule "
                                   "belong to the run as it started; start a new run to change it (keys that may "
                                   f"change: {', '.join(sorted(fingerprint.CHANGEABLE_ON_RESUME))})",
                                   Location(key=key)) for key in sorted(changing)])
    if overrides:
        config.save(run_dir / CONFIG_FILE)
    changed = fingerprint.changes(config, run_dir)
    if changed:
        raise RunDirError(f"{run_dir}: cannot resume: what the run was started from has changed, and its "
                          "checkpoint's optimizer state and schedule belong to the original. "
                          + "; ".join(changed) + f". Start a new run instead: tuneterm train {run_dir / CONFIG_FILE}")
    return RunPlan(config, run_dir, checkpoint, tuple(skipped))


class _Stopped(Exception):
    """A stop was requested before training started."""


def run(plan: RunPlan, sink: EventSink | None = None, control: RunControl | None = None) -> Event:
    """Run to the end and return the last event: RunFinished or RunFailed."""
    control = control or RunControl()
    import_training_libraries()
    with holding_run_lock(plan.run_dir), ChannelListener(plan.run_dir, control), \
            EventLog(plan.run_dir / EVENTS_FILE, sink) as emit, library_output_as_events(emit):
        try:
            result: Event = _Run(plan, emit, control).execute()
        except (_Stopped, Cancelled):
            result = RunFinished(status="stopped", run_dir=str(plan.run_dir), global_step=0)
        except KeyboardInterrupt:
            emit(RunFailed(reason=f"interrupted; continue with: tuneterm train --resume {plan.run_dir}",
                           error_type="KeyboardInterrupt"))
            raise
        except Exception as exc:  # the one place a run's failure is turned into an event
            result = failure_event(exc, _write_traceback(plan.run_dir))
        finally:
            release_library_state()
        emit(result)
        if emit.write_error is not None and isinstance(result, RunFinished):
            emit(WarningIssued(message=f"events.jsonl is incomplete: writing it failed ({emit.write_error})"))
        return result


def _write_traceback(run_dir: Path) -> Path | None:
    """The traceback in error.log, or None when even that cannot be written (a full disk)."""
    path = run_dir / ERROR_LOG
    try:
        path.write_text(traceback.format_exc(), encoding="utf-8")
    except OSError:
        return None
    return path


def failure_event(exc: BaseException, log_path: Path | None) -> RunFailed:
    """A failure as one sentence a person can act on, with the problems behind it and their locations, and what
    to change."""
    log = str(log_path) if log_path else None
    if isinstance(exc, TuneTermError):
        checkpoint = getattr(exc, "last_good_checkpoint", None)
        return RunFailed(reason=exc.summary, error_type=type(exc).__name__, log_path=log,
                         problems=[p.to_json() for p in sorted(exc.problems, key=lambda p: p.location.order())],
                         remedies=getattr(exc, "remedies", []),
                         last_good_checkpoint=str(checkpoint) if checkpoint else None)
    return RunFailed(reason=first_sentence(str(exc)) or type(exc).__name__, error_type=type(exc).__name__,
                     log_path=log)


def release_library_state() -> None:
    """Let the next run in this process start with all of the GPU memory this one used.

    The Trainer registers the embedding modules with bitsandbytes' process-wide GlobalOptimManager when it
    builds an 8-bit optimizer, and nothing ever unregisters them: without this, every QLoRA run leaks a copy of
    the embedding matrix (0.8 GB for Llama 3.2 3B, measured with bench/vram_calibration.py).
    """
    import gc
    import sys

    if "bitsandbytes.optim" in sys.modules:
        sys.modules["bitsandbytes.optim"].GlobalOptimManager.get_instance().initialize()
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class _Run:
    """The steps of one run, sharing what they load."""

    def __init__(self, plan: RunPlan, emit: EventSink, control: RunControl):
        self.plan, self.emit, self.control = plan, emit, control
        self.run_dir = plan.run_dir

    def phase(self, name: str, detail: str = "") -> None:
        if self.control.stop_requested:
            raise _Stopped
        self.emit(PhaseStarted(phase=name, detail=detail))

    def warn(self, messages: list[str]) -> None:
        for message in messages:
            self.emit(WarningIssued(message=message))

    def progress(self, progress: Progress) -> None:
        self.emit(PhaseProgressed(phase=progress.stage, done=progress.done, total=progress.total,
                                  fraction=progress.fraction))

    def execute(self) -> Event:
        config = self.plan.config
        self.warn(list(self.plan.skipped))
        self.phase("loading tokenizer", config.get("model.path"))
        tokenizer, warnings = load_tokenizer(config)
        self.warn(warnings)
        self.phase("preparing data", config.get("data.train"))
        work = Work(self.control.stop_event, self.progress, interval=0.5)
        data = prepare(config, tokenizer, model_facts(config).context_length, work)
        self.warn(data.warnings)
        device = CPU if config.get("training.use_cpu") else detect_device()
        config = resolve(config, device, train_examples=len(data.train.examples),
                         data_max_length=(data.max_length, data.max_length_why), world_size=_world_size())
        if device.kind == "cpu":
            config = self.set_cpu_threads(config)
        if self.plan.resume_from is None:
            run_config(config).save(self.run_dir / CONFIG_FILE)
            fingerprint.record(run_config(config), self.run_dir)
        if data.eval is None:
            self.warn(["no eval split (data.val_size is 0 and no data.eval): overfitting is invisible, and early "
                       "stopping and best-checkpoint selection are off"])

        self.phase("loading model", f"{config.get('model.path')} ({config.method}, {device.name})")
        model = load_model(config, config.get("training.precision"), device)
        self.phase("building trainer")
        trainer, callback = self.build_trainer(config, model, tokenizer, data, device)
        before = fingerprint_trainable(trainer.model)
        total, trainable = _parameter_counts(trainer.model)
        plan = schedule_of(config, len(data.train.examples), len(data.eval.examples) if data.eval else 0,
                           _world_size())
        self.emit(RunStarted(
            run_dir=str(self.run_dir), config=config.to_nested(), defaulted=sorted(config.defaulted),
            notes=config.notes, train_examples=plan.train_examples, eval_examples=plan.eval_examples,
            steps_per_epoch=plan.steps_per_epoch, total_steps=plan.total_steps,
            trainable_params=trainable, total_params=total, device=device.name,
            resumed_from=str(self.plan.resume_from) if self.plan.resume_from else None))
        if self.control.stop_requested:
            raise _Stopped
        if self.plan.resume_from is not None:
            self.stop_where_it_ended(trainer, config)
        self.emit(PhaseStarted(phase="training"))
        try:
            trainer.train(resume_from_checkpoint=str(self.plan.resume_from) if self.plan.resume_from else None)
        except Exception as exc:
            raise self.explained(exc, config, trainer.state.global_step, callback, data) from exc
        self.save_history(trainer)
        if callback.nonfinite is not None:
            raise failures.diverged(config, callback.nonfinite.step, callback.nonfinite.what, self.run_dir)

        self.emit(PhaseStarted(phase="saving", detail=str(self.run_dir)))
        try:
            trainer.save_model(str(self.run_dir))
            tokenizer.save_pretrained(str(self.run_dir))
            check = compare_saved(before, trainer.model, self.run_dir)
            (self.run_dir / ADAPTER_CHECK_FILE).write_text(json.dumps(check, indent=2) + "\n", encoding="utf-8")
        except Exception as exc:
            raise self.explained(exc, config, trainer.state.global_step, callback, data) from exc
        if check["non_finite"]:
            raise failures.diverged(config, trainer.state.global_step,
                                    f"{len(check['non_finite'])} tensors of the saved adapter", self.run_dir)
        if not check["all_changed"]:
            self.warn([f"training left {len(check['unchanged'])} of {check['tensors']} trainable tensors exactly "
                       f"unchanged (see {ADAPTER_CHECK_FILE})"])
        return self.finished(trainer, callback, check, has_eval=data.eval is not None)

    def stop_where_it_ended(self, trainer: Any, config: RunConfig) -> None:
        """A run whose early stopping had already fired (it was interrupted while saving) trains no further."""
        from tuneterm.engine.callback import evaluations_without_improvement

        assert self.plan.resume_from is not None
        state = json.loads((self.plan.resume_from / "trainer_state.json").read_text(encoding="utf-8"))
        since = evaluations_without_improvement(state["log_history"], config.get("training.early_stopping_threshold"))
        if trainer.eval_dataset is not None and since >= config.get("training.early_stopping_patience"):
            trainer.args.max_steps = state["global_step"]

    def explained(self, exc: Exception, config: RunConfig, step: int, callback: Any,
                  data: PreparedData) -> Exception:
        """The failures tuneterm can explain, as a RunFailure; anything else as it is."""
        if failures.is_out_of_memory(exc):
            return failures.out_of_memory(config, step, failures.raised_in_evaluation(exc), self.run_dir,
                                          data.view.lengths["p95"])
        if failures.is_disk_full(exc):
            return failures.disk_full(self.run_dir, step)
        return exc

    def save_history(self, trainer: Any) -> None:
        """The Trainer's log history and the loss curves, whatever the end (best effort on a full disk)."""
        from tuneterm.engine.plots import save_loss_plots

        with contextlib.suppress(OSError):
            trainer.state.save_to_json(str(self.run_dir / "trainer_state.json"))
            save_loss_plots(read_events(self.run_dir / EVENTS_FILE), self.run_dir)

    def finished(self, trainer: Any, callback: Any, check: dict[str, Any], has_eval: bool) -> RunFinished:
        """The end as it truly is: "best" only for an evaluation that beat the untrained baseline."""
        status: RunStatus = ("stopped" if self.control.stop_requested
                             else "early_stopped" if callback.early_stopped else "completed")
        outcome: Outcome = ("not_evaluated" if not has_eval else "improved" if callback.best is not None
                            else "worse_than_baseline")
        if outcome == "worse_than_baseline":
            self.warn([f"no evaluation beat the eval loss before training ({callback.baseline:.4f}): training made "
                       "the eval loss worse. The adapter saved is the last one, and nothing is called best. Try a "
                       "lower learning rate, or look at whether the eval data is like the training data."])
        best_checkpoint = trainer.state.best_model_checkpoint if outcome == "improved" else None
        return RunFinished(status=status, run_dir=str(self.run_dir), global_step=trainer.state.global_step,
                           adapter_dir=str(self.run_dir), best_checkpoint=best_checkpoint,
                           best_eval_loss=callback.best[0] if callback.best else None,
                           baseline_eval_loss=callback.baseline, final_eval_loss=callback.last_eval,
                           outcome=outcome, adapter_changed=check["ok"], adapter_check=check)

    def set_cpu_threads(self, config: RunConfig) -> RunConfig:
        import torch

        threads, why = choose_cpu_threads(config.get("training.cpu_threads"))
        torch.set_num_threads(threads)
        return config.resolved({"training.cpu_threads": (threads, why)})

    def build_trainer(self, config: RunConfig, model: Any, tokenizer: Any, data: PreparedData,
                      device: Device) -> tuple[Any, Any]:
        from transformers import EarlyStoppingCallback

        from tuneterm.engine.callback import EventCallback

        train_dataset, eval_dataset = data.to_datasets()
        early_stopping = None
        if eval_dataset is not None:
            early_stopping = EarlyStoppingCallback(config.get("training.early_stopping_patience"),
                                                   config.get("training.early_stopping_threshold"))
        callback = EventCallback(self.emit, self.control, early_stopping, config.get("training.precision"))
        callbacks = [c for c in (early_stopping, callback) if c is not None]
        trainer = build_trainer(config, model, tokenizer, train_dataset, eval_dataset, self.run_dir, device,
                                callbacks, resuming=self.plan.resume_from is not None)
        return trainer, callback


def build_trainer(config: RunConfig, model: Any, tokenizer: Any, train_dataset: Any, eval_dataset: Any | None,
                  output_dir: Path, device: Device, callbacks: list[Any], resuming: bool = False) -> Any:
    """The SFTTrainer for a resolved config and tokenised datasets (also used by the VRAM calibration bench)."""
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    training = config.section("training")
    has_eval = eval_dataset is not None
    arguments = {k: v for k, v in training.items() if k not in _TUNETERM_TRAINING_KEYS}
    arguments.update(
        output_dir=str(output_dir),
        bf16=training["precision"] == "bf16",
        fp16=training["precision"] == "fp16",
        use_cpu=device.kind == "cpu",
        activation_checkpointing=training["gradient_checkpointing"],
        eval_strategy="steps" if has_eval else "no",
        save_strategy="steps",
        load_best_model_at_end=training["load_best_model_at_end"] and has_eval,
        # A resumed run has its baseline already; evaluating again would count against patience.
        eval_on_start=training["eval_on_start"] and has_eval and not resuming,
        report_to="none",
        disable_tqdm=True,
        # A NaN loss must be seen as NaN (the default replaces it with an average, or 0.0 at the start).
        logging_nan_inf_filter=False,
        # With a limit of 1 the Trainer deletes the last checkpoint at the end when the best is another one; the
        # last complete checkpoint is never deleted.
        save_total_limit=max(training["save_total_limit"], 2) if has_eval else training["save_total_limit"],
        include_num_input_tokens_seen="non_padding",
    )
    trainer = SFTTrainer(model=model, args=SFTConfig(**arguments), train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=tokenizer, callbacks=callbacks,
                         peft_config=lora_config(config) if config.method != "full" else None)
    trainer.remove_callback(PrinterCallback)  # progress goes through events, not print()
    return trainer


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def lora_config(config: RunConfig) -> Any:
    from peft import LoftQConfig, LoraConfig

    fields = config.section("lora")
    if isinstance(fields.get("loftq_config"), dict):
        fields["loftq_config"] = LoftQConfig(**fields["loftq_config"])
    return LoraConfig(task_type="CAUSAL_LM", **fields)


def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")


def _trainable_tensors(model: Any) -> dict[str, Any]:
    """What training is meant to change, named as it will be saved."""
    if _is_peft(model):
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model)
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def fingerprint_trainable(model: Any) -> dict[str, str]:
    from tuneterm.engine.verify import fingerprint

    return fingerprint(_trainable_tensors(model))


def compare_saved(before: dict[str, str], model: Any, run_dir: Path) -> dict[str, Any]:
    """Compare with the adapter file as written (full fine-tuning: with the weights in memory)."""
    from tuneterm.engine.verify import compare

    if _is_peft(model):
        from safetensors.torch import load_file

        return compare(before, load_file(str(run_dir / "adapter_model.safetensors")))
    return compare(before, _trainable_tensors(model))


def _parameter_counts(model: Any) -> tuple[int, int]:
    """(total, trainable), counting 4-bit packed weights at their real size, as PEFT reports them."""
    if _is_peft(model):
        trainable, total = model.get_nb_trainable_parameters()
        return total, trainable
    return (sum(p.numel() for p in model.parameters()),
            sum(p.numel() for p in model.parameters() if p.requires_grad))
