"""run(plan, sink, control): one fine-tuning run from its plan to a saved, verified adapter.

The TUI's worker thread, the headless `tuneterm train`, a detached run and a run under `accelerate launch` all
call this function. It knows nothing of who is watching: it reports through the event sink (and always to
RUN_DIR/events.jsonl) and listens to the control object between optimizer steps. It may run in any thread.

Under a launcher every process calls it with the same plan (plans.planned_by_main); only the main process writes the run
directory and reports (engine/launch/distributed.py), the others train alongside and drop their events.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tuneterm.config import RunConfig
from tuneterm.data.prepare import PreparedData, prepare
from tuneterm.data.tokenizer import load_tokenizer
from tuneterm.engine.after.generate import eval_samples_of, save_eval_samples
from tuneterm.engine.capture import library_output_as_events
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
from tuneterm.engine.launch import distributed
from tuneterm.engine.launch.channel import ChannelListener
from tuneterm.engine.loading import detect_device, load_model
from tuneterm.engine.run import failures
from tuneterm.engine.run.packed import refuse_mixing_rows
from tuneterm.engine.run.plans import RunPlan, run_config
from tuneterm.engine.run.trainer import build_trainer, parameter_counts, save_adapter
from tuneterm.engine.run.verify import compare_saved, fingerprint_trainable
from tuneterm.engine.rundir import fingerprint
from tuneterm.engine.rundir.layout import CONFIG_FILE, holding_run_lock
from tuneterm.errors import Cancelled, TuneTermError, first_sentence
from tuneterm.hardware import CPU, Device, choose_cpu_threads, peak_flops, usable_cores
from tuneterm.plan.flops import mean_context, training_flops_per_token
from tuneterm.plan.memory import SHARDED_WEIGHTS, estimate_memory
from tuneterm.plan.planner import data_summary, lora_shape, memory_setup, model_facts
from tuneterm.plan.resolve import flattens_rows, resolve, schedule_of, tokens_of
from tuneterm.work import Progress, Work, import_training_libraries

ADAPTER_CHECK_FILE = "adapter_check.json"
ERROR_LOG = "error.log"


class _Stopped(Exception):
    """A stop was requested before training started."""


def run(plan: RunPlan, sink: EventSink | None = None, control: RunControl | None = None) -> Event:
    """Run to the end and return the last event: RunFinished or RunFailed."""
    control = control or RunControl()
    import_training_libraries()
    with contextlib.ExitStack() as held:
        emit = held.enter_context(_reporting(plan.run_dir, sink, control))
        held.enter_context(library_output_as_events(emit))
        try:
            result: Event = _Run(plan, emit, control).execute()
        except (_Stopped, Cancelled):
            result = RunFinished(status="stopped", run_dir=str(plan.run_dir), global_step=0)
        except KeyboardInterrupt:
            emit(RunFailed(reason=f"interrupted; continue with: tuneterm train --resume {plan.run_dir}",
                           error_type="KeyboardInterrupt"))
            raise
        except Exception as exc:  # the one place a run's failure is turned into an event
            result = failure_event(exc, _record_traceback(plan.run_dir))
        finally:
            release_library_state()
        if isinstance(result, RunFailed) and result.error_type == PEER_FAILED and distributed.supervised():
            return result  # the supervisor reports it, with the rank and exit code the launcher gives
        emit(result)
        if emit.write_error is not None and isinstance(result, RunFinished):
            emit(WarningIssued(message=f"events.jsonl is incomplete: writing it failed ({emit.write_error})"))
        if distributed.is_main():
            _write_run_card(plan.run_dir)
        return result


def _write_run_card(run_dir: Path) -> None:
    """README.md from the run's files, after its last event. The run has ended either way: a card that cannot be
    written is said on stderr (train.log for a run that is not in a terminal), never turned into a failure."""
    from tuneterm.engine.after.card import write_card
    from tuneterm.engine.after.report import report_of

    try:
        write_card(report_of(run_dir))
    except Exception as exc:  # noqa: BLE001 - any reason, said, and the run's result stands
        print(f"tuneterm: the run card {run_dir / 'README.md'} was not written: {exc}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _reporting(run_dir: Path, sink: EventSink | None, control: RunControl) -> Iterator[EventLog]:
    """The main process holds the run's lock (unless its supervisor does), reads the control channel and writes
    events.jsonl; every other process of a distributed run keeps quiet."""
    if not distributed.is_main():
        with EventLog(None) as silent:
            yield silent
        return
    with contextlib.ExitStack() as held:
        if not distributed.supervised():
            held.enter_context(holding_run_lock(run_dir))
        held.enter_context(ChannelListener(run_dir, control, distributed.control_from()))
        yield held.enter_context(EventLog(run_dir / EVENTS_FILE, sink))


def _record_traceback(run_dir: Path) -> Path | None:
    """The traceback in error.log, or None when even that cannot be written (a full disk). The other processes of
    a distributed run print theirs, which the launcher's output (train.log) keeps."""
    if not distributed.is_main():
        print(f"[rank {distributed.rank()}] {traceback.format_exc()}", file=sys.stderr, flush=True)
        return None
    path = run_dir / ERROR_LOG
    try:
        path.write_text(traceback.format_exc(), encoding="utf-8")
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.unlink()  # an empty or cut error.log would pass for the whole traceback
        print(f"tuneterm: the traceback could not be written to {path}: {exc.strerror or exc}", file=sys.stderr,
              flush=True)
        return None
    return path


PEER_FAILED = "PeerFailed"


def failure_event(exc: BaseException, log_path: Path | None) -> RunFailed:
    """A failure as one sentence a person can act on, with the problems behind it and their locations, and what
    to change."""
    log = str(log_path) if log_path else None
    if distributed.is_peer_failure(exc):
        return RunFailed(reason=f"another process of this {distributed.world_size()}-process run failed or was "
                                "killed, so this one could not go on; the launcher's output says which and why "
                                f"(train.log for a detached run): {first_sentence(str(exc))}",
                         error_type=PEER_FAILED, log_path=log)
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
        self.together = distributed.launched()
        """Whether the processes of a distributed run still work in step (until the adapter is saved)."""

    def phase(self, name: str, detail: str = "") -> None:
        if self.stop_agreed():
            raise _Stopped
        self.emit(PhaseStarted(phase=name, detail=detail))

    def stop_agreed(self) -> bool:
        """Whether a stop was asked of this process or, while the processes of a distributed run work together,
        of any of them: all stop together."""
        if not self.together:
            return self.control.stop_requested
        return bool(distributed.agreed([self.control.stop_requested])[0])

    def warn(self, messages: list[str]) -> None:
        for message in messages:
            self.emit(WarningIssued(message=message))

    def progress(self, progress: Progress) -> None:
        self.emit(PhaseProgressed(phase=progress.stage, done=progress.done, total=progress.total,
                                  fraction=progress.fraction))

    def execute(self) -> Event:
        config = self.plan.config
        main, world, strategy = distributed.is_main(), distributed.world_size(), distributed.strategy()
        self.warn(list(self.plan.skipped))
        self.phase("loading tokenizer", config.get("model.path"))
        tokenizer, warnings = load_tokenizer(config)
        self.warn(warnings)
        self.phase("preparing data", config.get("data.train"))
        # Cancelling half-way is for a run alone: processes of a distributed run stop together, at the next phase.
        # The processes of a run on this machine share its cores; a run alone uses those free of other work.
        processes = distributed.local_world_size()
        work = Work(threading.Event() if distributed.launched() else self.control.stop_event, self.progress,
                    interval=0.5, cores=max(1, len(usable_cores()) // processes) if processes > 1 else None)
        # What the wizard (or an earlier pass with the same data and settings) prepared is trained as it is.
        summary = data_summary(config, work, (tokenizer, warnings))
        data = prepare(config, tokenizer, model_facts(config).context_length, work, summary)
        self.warn(data.warnings)
        device = CPU if config.get("training.use_cpu") else detect_device()
        lengths = np.array([len(example.input_ids) for example in data.train.examples], dtype=np.int64)
        config = resolve(config, device, data_max_length=(data.max_length, data.max_length_why), world_size=world,
                         strategy=strategy, train_lengths=lengths)
        _check_same_everywhere(config, data)
        if device.kind == "cpu":
            config = self.set_cpu_threads(config)
        if self.plan.resume_from is None and main:
            run_config(config).save(self.run_dir / CONFIG_FILE)
            fingerprint.record(run_config(config), self.run_dir)
        if data.eval is None:
            self.warn(["no eval split (data.val_size is 0 and no data.eval): overfitting is invisible, and early "
                       "stopping and best-checkpoint selection are off"])
        elif main:  # what the chat and the stop check prompt with, as the model saw it
            save_eval_samples(eval_samples_of(data.eval.examples, tokenizer), self.run_dir)

        self.phase("loading model", f"{config.get('model.path')} ({config.method}, {device.name})")
        model = load_model(config, config.get("training.precision"), device, strategy)
        if flattens_rows(config) and strategy in SHARDED_WEIGHTS:
            self.warn([f"{strategy} shards the weights before they can compute, so whether the examples of a "
                       "padding-free row stay apart was not checked on this model (a run on one GPU checks it)"])
        elif flattens_rows(config):
            refuse_mixing_rows(model, config)
        self.phase("building trainer")
        trainer, callback = self.trainer_with_callbacks(config, model, tokenizer, data, device)
        before = fingerprint_trainable(trainer.model) if main else {}
        total, trainable = parameter_counts(trainer.model)
        tokens = tokens_of(config, lengths)
        plan = schedule_of(config, len(data.train.examples), len(data.eval.examples) if data.eval else 0, world,
                           tokens.sequences)
        facts = model_facts(config)
        memory = estimate_memory(facts, memory_setup(config, facts.context_length, world,
                                                     "cuda" if device.kind == "cuda" else "cpu", strategy))
        peak, peak_why = peak_flops(device, config.get("training.precision"))
        self.emit(RunStarted(
            run_dir=str(self.run_dir), config=config.to_nested(), defaulted=sorted(config.defaulted),
            notes=config.notes, train_examples=plan.train_examples, eval_examples=plan.eval_examples,
            steps_per_epoch=plan.steps_per_epoch, total_steps=plan.total_steps,
            trainable_params=trainable, total_params=total, device=device.name,
            resumed_from=str(self.plan.resume_from) if self.plan.resume_from else None,
            world_size=world, strategy=strategy, processes=distributed.processes(),
            lr_scheduler_type=config.get("training.lr_scheduler_type"),
            learning_rate=config.get("training.learning_rate"), warmup_steps=plan.warmup_steps,
            eval_steps=plan.eval_steps, early_stopping_patience=config.get("training.early_stopping_patience"),
            effective_batch_size=plan.effective_batch_size,
            estimated_memory=memory.breakdown, estimated_memory_total=memory.total_bytes,
            thinking=data.thinking,
            train_sequences=tokens.sequences, tokens_per_step=tokens.real_per_step * world,
            padding_share=tokens.padding_share,
            flops_per_token=training_flops_per_token(facts, config.method, lora_shape(config), mean_context(lengths)),
            peak_flops=peak, peak_flops_why=peak_why))
        if self.stop_agreed():
            raise _Stopped
        self.emit(PhaseStarted(phase="training"))
        try:
            self.train(trainer)
        except Exception as exc:
            raise self.explained(exc, config, trainer.state.global_step, callback, data) from exc
        if main:
            self.save_history(trainer)
        if callback.nonfinite is not None:
            raise failures.diverged(config, callback.nonfinite.step, callback.nonfinite.what, self.run_dir)

        self.emit(PhaseStarted(phase="saving", detail=str(self.run_dir)))
        try:
            save_adapter(trainer, self.run_dir)
            self.together = False  # what is left is the main process's alone
            if not main:  # the main process checks and reports what was saved
                return RunFinished(status=status_of(callback), run_dir=str(self.run_dir),
                                   global_step=trainer.state.global_step)
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
        if data.eval is not None:
            self.check_stopping(config, trainer.model, tokenizer, device, strategy)
        return self.finished(trainer, callback, check, has_eval=data.eval is not None)

    def train(self, trainer: Any) -> None:
        """Train from the start or from the checkpoint resumed from. A checkpoint at the run's end (its last step,
        or early stopping had fired: the run was killed while saving) trains no further: the Trainer loads it, then
        the run ends as the Trainer ends one, with the best checkpoint loaded when the run keeps the best."""
        from tuneterm.engine.run.callback import NothingLeftToTrain

        try:
            trainer.train(resume_from_checkpoint=str(self.plan.resume_from) if self.plan.resume_from else None)
        except NothingLeftToTrain:
            if trainer.args.load_best_model_at_end and trainer.state.best_model_checkpoint is not None:
                trainer._load_best_model()  # what the Trainer's own end of training does

    def check_stopping(self, config: RunConfig, model: Any, tokenizer: Any, device: Device, strategy: str) -> None:
        """Do its answers end? Checked on the model in memory, before it is freed (not when the person asked to
        stop, even after the last step, and not where the weights are sharded across processes: then tuneterm
        chat --stop-check does it)."""
        from tuneterm.engine.after.stopcheck import check_after_training

        later = f"check it with tuneterm chat {self.run_dir} --stop-check"
        if self.control.stop_requested or strategy in SHARDED_WEIGHTS:
            why = "a stop was asked" if self.control.stop_requested else f"{strategy} shards the weights"
            self.warn([f"stop check skipped ({why}): {later}"])
            return
        # Not a phase that a stop cancels: training is over, and a stop asked now must not turn it into "stopped".
        self.emit(PhaseStarted(phase="checking that answers end", detail="generating for eval prompts"))
        check = check_after_training(self.run_dir, config, model, tokenizer, device)
        if check.runaway:
            self.warn([f"stop check: {check.summary()} (see stop_check.json)"])

    def explained(self, exc: Exception, config: RunConfig, step: int, callback: Any,
                  data: PreparedData) -> Exception:
        """The failures tuneterm can explain, as a RunFailure; anything else as it is."""
        if failures.is_out_of_memory(exc):
            return failures.out_of_memory(config, step, failures.raised_in_evaluation(exc), self.run_dir,
                                          data.view.lengths["p95"])
        if failures.is_disk_full(exc, self.run_dir):
            return failures.disk_full(self.run_dir, step)
        return exc

    def save_history(self, trainer: Any) -> None:
        """The Trainer's log history and the loss curves, whatever the end (best effort on a full disk)."""
        from tuneterm.engine.after.plots import save_loss_plots

        with contextlib.suppress(OSError):
            trainer.state.save_to_json(str(self.run_dir / "trainer_state.json"))
            save_loss_plots(read_events(self.run_dir / EVENTS_FILE), self.run_dir)

    def finished(self, trainer: Any, callback: Any, check: dict[str, Any], has_eval: bool) -> RunFinished:
        """The end as it truly is: "best" only for an evaluation that beat the untrained baseline."""
        status = status_of(callback)
        # Stopped before the first evaluation after the baseline: neither better nor worse is known.
        outcome: Outcome = ("not_evaluated" if not has_eval or not callback.evaluated_since_baseline
                            else "improved" if callback.best is not None else "worse_than_baseline")
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

        threads, why = choose_cpu_threads(config.get("training.cpu_threads"),
                                          processes=distributed.local_world_size())
        torch.set_num_threads(threads)
        return config.resolved({"training.cpu_threads": (threads, why)})

    def trainer_with_callbacks(self, config: RunConfig, model: Any, tokenizer: Any, data: PreparedData,
                               device: Device) -> tuple[Any, Any]:
        from transformers import EarlyStoppingCallback

        from tuneterm.engine.run.callback import EventCallback

        train_dataset, eval_dataset = data.to_datasets()
        early_stopping = None
        if eval_dataset is not None:
            early_stopping = EarlyStoppingCallback(config.get("training.early_stopping_patience"),
                                                   config.get("training.early_stopping_threshold"))
        callback = EventCallback(self.emit, self.control, early_stopping, config.get("training.precision"))
        callbacks = [c for c in (early_stopping, callback) if c is not None]
        trainer = build_trainer(config, model, tokenizer, train_dataset, eval_dataset, self.run_dir, device,
                                callbacks, resuming=self.plan.resume_from is not None)
        callback.trainer = trainer
        return trainer, callback


def status_of(callback: Any) -> RunStatus:
    """Stopped only when a stop ended training before its last step; one asked for later leaves it completed."""
    return "stopped" if callback.stopped_at is not None else "early_stopped" if callback.early_stopped else "completed"


def _check_same_everywhere(config: RunConfig, data: PreparedData) -> None:
    """Every process of a distributed run must train the same config on the same examples; a data file that
    differs between machines, or a model that does, would otherwise train something nobody asked for."""
    digest = hashlib.blake2b(json.dumps(config.values, sort_keys=True, default=str).encode("utf-8"), digest_size=16)
    for split in (data.train, data.eval):
        for example in split.examples if split else ():
            digest.update(len(example.input_ids).to_bytes(4, "little"))
    differing = distributed.ranks_unlike_main(digest.hexdigest())
    if differing:
        raise TuneTermError(f"the processes of rank {', '.join(map(str, differing))} read other data or resolved "
                            "another config than the main process: every machine needs the same model and data "
                            "files at the same paths (a shared filesystem)")


