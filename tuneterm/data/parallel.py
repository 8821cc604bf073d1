"""A stream of chunks worked through on every core other work leaves free, the results in order, cancellable.

Rendering chat templates, and the Python around tokenising, hold the interpreter's lock: a thread cannot use another
core, a process can. `in_order` applies a function to each chunk of a stream and yields the results in order. It
starts working in this process at once while the worker processes start (importing the tokenizer's libraries takes
them seconds); once one is up, chunks go to the workers first, and this process takes a chunk itself whenever they
have enough queued, so no core waits. What is in flight is bounded, so memory does not grow with the stream.

A cancel (Work) is seen within a tenth of a second while waiting and at every record otherwise, and terminates
every worker. A worker that dies (killed, out of memory) stops the work with an error that says so, instead of
waiting for a result that never comes. Workers print nothing: their output would land on the screen of the app.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tuneterm.errors import TuneTermError
from tuneterm.hardware import busy_cores, usable_cores
from tuneterm.work import Work

Item = TypeVar("Item")
Result = TypeVar("Result")

MAX_WORKERS = 8
"""Beyond this the reading, checking and merging in this process is the limit, and each worker holds its own copy
of the tokenizer."""
SAMPLE_SECONDS = 0.2
"""How long the cores' load is looked at before a pass chooses its workers."""
WAIT_SECONDS = 0.1
"""How often waiting for a worker looks at the cancel flag and at the workers."""
STOP_SECONDS = 1.0
"""How long a terminated worker is given to end before it is killed; how often an idle worker looks for its parent."""


class WorkerDied(TuneTermError):
    """A worker process ended before returning its chunk."""


@dataclass(frozen=True)
class Workers(Generic[Item, Result]):
    """How worker processes do the work: `start(*args)` once in each (module-level functions, so that they can be
    sent to a process), then `run(state, item)` per chunk."""

    count: int
    start: Callable[..., Any]
    args: tuple[Any, ...]
    run: Callable[[Any, Item], Result]


def worker_count(cores: int | None = None) -> int:
    """Workers beside this process: one per other core of `cores`, or when None, of the cores it may use that other
    work does not keep busy now (a worker on a busy core takes its time from this process and that work, and costs
    its start besides: on a machine shared with other work, a second process is slower than none)."""
    available = cores if cores is not None else len(usable_cores()) - len(busy_cores(SAMPLE_SECONDS))
    return max(0, min(available - 1, MAX_WORKERS))


def in_order(items: Iterable[Item], here: Callable[[Item], Result], workers: Workers[Item, Result] | None,
             work: Work) -> Iterator[Result]:
    """here(item) (or workers.run in a worker) for every item, yielded in the items' order."""
    if workers is None or workers.count == 0:
        yield from (here(item) for item in items)
        return
    team = _Team(workers.count, work)
    try:
        team.start(workers)
        yield from team.results(items, here)
    finally:
        team.stop()
        team.close()


class _Team:
    """The worker processes of one `in_order`, what is sent to them and what came back."""

    def __init__(self, count: int, work: Work):
        _start_resource_tracker()
        self.context = multiprocessing.get_context("spawn")
        self.work = work
        self.tasks: multiprocessing.Queue[Any] = self.context.Queue()
        self.done: multiprocessing.Queue[Any] = self.context.Queue()
        # Each worker's setup is sent by a background thread, so that a large tokenizer never blocks this one; the
        # queues are kept until the workers end (a queue collected too soon takes its semaphores with it).
        self.setups: list[multiprocessing.Queue[Any]] = [self.context.Queue() for _ in range(count)]
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.capacity = 2 * count
        self.ready = False
        self.sent = 0
        self.finished: dict[int, Any] = {}

    def start(self, workers: Workers[Any, Any]) -> None:
        for setup in self.setups:
            process = self.context.Process(target=_serve, args=(workers.start, workers.run, setup, self.tasks,
                                                                 self.done), daemon=True)
            process.start()
            self.processes.append(process)
            setup.put(workers.args)

    def results(self, items: Iterable[Any], here: Callable[[Any], Any]) -> Iterator[Any]:
        position = total = 0  # the next result to yield, and how many items were taken
        for index, item in enumerate(items):
            total = index + 1
            self.collect(block=False)
            if self.ready and self.sent < self.capacity:
                # Pickled here, so that what cannot be sent fails here (a queue's own thread would drop it unsaid).
                self.tasks.put(pickle.dumps((index, item), protocol=pickle.HIGHEST_PROTOCOL))
                self.sent += 1
            else:
                self.finished[index] = here(item)
            while position in self.finished or total - position > 2 * self.capacity:
                yield self.result(position)
                position += 1
        while position < total:
            yield self.result(position)
            position += 1

    def result(self, position: int) -> Any:
        while position not in self.finished:
            self.collect(block=True)
        return self.finished.pop(position)

    def collect(self, block: bool) -> None:
        """Take what the workers have returned; with `block`, wait until something comes (seeing cancels and dead
        workers meanwhile)."""
        while True:
            try:
                message = self.done.get(timeout=WAIT_SECONDS) if block else self.done.get_nowait()
            except queue.Empty:
                self.check_alive()
                if not block:
                    return
                self.work.check()
                continue
            if message is None:
                self.ready = True
            else:
                index, result, error = message
                if error is not None:
                    raise error
                self.finished[index] = result
                self.sent -= 1
            block = False

    def check_alive(self) -> None:
        """A worker that ended with chunks in flight lost one: the work stops. One that ended before any was sent
        (it could not start: a script without `if __name__ == "__main__":` starts again in it) leaves the work to
        this process."""
        code = next((process.exitcode for process in self.processes if process.exitcode is not None), None)
        if code is None:
            return
        if self.sent:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            raise WorkerDied(f"a worker process preparing the data {how} (out of memory?); the data was not prepared")
        self.stop()
        self.ready = False

    def stop(self) -> None:
        """Terminate the workers (at once: what they work on is not needed any more)."""
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.join(STOP_SECONDS)
            if process.is_alive():
                process.kill()
                process.join()
        self.processes = []

    def close(self) -> None:
        for channel in (self.tasks, self.done, *self.setups):
            channel.cancel_join_thread()
            channel.close()


def _start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker, the helper process every spawned process is given, if it is not
    running: it inherits the file descriptor of sys.stderr, and starting it fails ("bad value(s) in fds_to_keep")
    where sys.stderr has none, as in a Textual app, which captures it (fileno() -1). It is given /dev/null then."""
    from multiprocessing import resource_tracker

    try:
        if sys.stderr.fileno() >= 0:
            return
    except (AttributeError, OSError, ValueError):  # None, or a stream that has no descriptor at all
        pass
    captured = sys.stderr
    with open(os.devnull, "w") as silent:
        sys.stderr = silent
        try:
            resource_tracker.ensure_running()
        finally:
            sys.stderr = captured


def _serve(start: Callable[..., Any], run: Callable[[Any, Any], Any], setup: multiprocessing.Queue[Any],
           tasks: multiprocessing.Queue[Any], done: multiprocessing.Queue[Any]) -> None:
    """A worker process: silent, set up, then one chunk after another until terminated, or until the process that
    started it is gone (killed: nothing terminates the workers then)."""
    silent = os.open(os.devnull, os.O_WRONLY)
    os.dup2(silent, 1)
    os.dup2(silent, 2)
    parent = os.getppid()
    # Nothing reads what is left unsent once the parent is gone: the worker does not wait to send it as it ends.
    done.cancel_join_thread()
    args = _take(setup, parent)
    if args is None:
        return
    state = start(*args)
    done.put(None)
    while (task := _take(tasks, parent)) is not None:
        index, item = pickle.loads(task)
        try:
            done.put((index, run(state, item), None))
        except Exception as exc:  # noqa: BLE001 - any failure goes back to the process that waits for it
            done.put((index, None, _sendable(exc)))


def _take(channel: multiprocessing.Queue[Any], parent: int) -> Any:
    """The next message on `channel`, or None once the process that started this one has ended (its orphans are
    adopted by another: their parent changes)."""
    while True:
        try:
            return channel.get(timeout=STOP_SECONDS)
        except queue.Empty:
            if os.getppid() != parent:
                return None


def _sendable(exc: Exception) -> Exception:
    """The exception itself when it survives pickling, else its traceback as a RuntimeError."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any exception type may refuse pickling
        return RuntimeError("".join(traceback.format_exception(exc)))
