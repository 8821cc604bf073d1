"""Signals whatever state the terminal is in, and a second signal wherever the process is.

An SSH session that drops leaves `tuneterm train` writing into pipes nobody reads and sends it SIGHUP: the run
must still stop after its step with a checkpoint that resumes, every line it writes from then on dropped. A second
Ctrl-C during the final save must end the process at once, in one line, whatever the interpreter is doing then:
here its handler runs inside a garbage collection of the save (a collector's callback, as a finalizer would be),
where the interpreter swallows any exception raised from it: raised, the abort never happened.
"""

from __future__ import annotations

import signal
from pathlib import Path

from tests.faults.conftest import kill, start_training, steps_after_the_last_start, write_config
from tests.helpers import SLOW_STEPS, events_of, logged_step, wait_for
from tuneterm.engine.events import SINK_ERROR_LOG, RunFailed, RunFinished
from tuneterm.engine.run.plans import resume_run
from tuneterm.engine.run.runner import ERROR_LOG, run
from tuneterm.engine.rundir.layout import MARKER_FILE
from tuneterm.engine.rundir.runs import summarise_run

# The second Ctrl-C, sent by the process to itself as the first garbage collection of the final save starts.
SECOND_CTRL_C_WHILE_THE_SAVE_COLLECTS = """
import gc, os, signal
import tuneterm.engine.run.trainer as _trainer
_save_adapter = _trainer.save_adapter
def _ctrl_c_again(phase, info):
    if phase == "start":
        gc.callbacks.remove(_ctrl_c_again)
        os.kill(os.getpid(), signal.SIGINT)
def _saving(*args, **kwargs):
    gc.callbacks.append(_ctrl_c_again)
    return _save_adapter(*args, **kwargs)
_trainer.save_adapter = _saving
"""


def test_sighup_after_the_terminal_is_gone_stops_with_a_checkpoint_that_resumes(tiny_run: dict,
                                                                                 tmp_path: Path) -> None:
    run_dir = Path(tiny_run["training"]["output_dir"])
    process = start_training(write_config(tmp_path / "run.yaml", tiny_run), SLOW_STEPS)
    wait_for(lambda: logged_step(run_dir) >= 3, what="three steps")
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the session dropped: nobody reads the run's output any more
    process.stderr.close()
    kill(process, signal.SIGHUP)
    assert process.wait(120) == 0
    finished = events_of(run_dir)[-1]
    assert isinstance(finished, RunFinished) and finished.status == "stopped", finished
    stopped_at = finished.global_step
    assert (run_dir / f"checkpoint-{stopped_at}" / MARKER_FILE).is_file()
    assert not (run_dir / SINK_ERROR_LOG).exists(), "a progress line that cannot be written is dropped quietly"
    assert not (run_dir / ERROR_LOG).exists()

    result = run(resume_run(run_dir))
    assert isinstance(result, RunFinished) and result.status == "completed", result
    assert events_of(run_dir)[-1] == result
    assert steps_after_the_last_start(run_dir)[0] == stopped_at + 1


def test_a_second_ctrl_c_during_the_final_save_aborts_at_once_in_one_line(tiny_run: dict, tmp_path: Path) -> None:
    run_dir = Path(tiny_run["training"]["output_dir"])
    process = start_training(write_config(tmp_path / "run.yaml", tiny_run),
                             SLOW_STEPS + SECOND_CTRL_C_WHILE_THE_SAVE_COLLECTS)
    wait_for(lambda: logged_step(run_dir) >= 3, what="three steps")
    kill(process, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err  # neither finished as if never aborted, nor SIGABRT (-6)
    assert err.strip().splitlines()[-1] == ("Aborted. Continue from the last complete checkpoint with: tuneterm "
                                            f"train --resume {run_dir}")
    for crash in ("Traceback", "Exception ignored", "Fatal Python error"):
        assert crash not in err
    aborted = events_of(run_dir)[-1]
    assert isinstance(aborted, RunFailed) and aborted.reason.startswith("aborted by a second signal (Ctrl-C)"), aborted
    summary = summarise_run(run_dir)
    assert summary is not None and summary.status == "failed"

    result = run(resume_run(run_dir))
    assert isinstance(result, RunFinished) and result.status == "completed", result
