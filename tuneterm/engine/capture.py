"""Library warnings become WarningIssued events instead of text on the terminal.

transformers, TRL, PEFT, datasets and bitsandbytes print warnings and progress bars straight to stderr, which
would tear through a full-screen TUI and bury the few lines that matter in headless output. During a run their
loggers (and Python warnings) are routed into the event stream, each distinct message once, and their progress
bars are turned off; everything is restored afterwards. Commands that load a model outside a run (plan, inspect,
chat, merge) route them the same way, into warning lines.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from tuneterm.engine.events import EventSink, WarningIssued

LIBRARY_LOGGERS = ("transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "py.warnings")

# Messages about library internals that a person fine-tuning a model cannot act on (bitsandbytes' optional CPU
# kernel, fetched from the hub, which no offline machine can get; the Trainer ordering its checkpoints by number
# when two were saved within a second, as those of a tiny model are).
_NOISE = ("FutureWarning", "DeprecationWarning", "is deprecated", "will be removed in", "kernels-community",
          "mtime may not be reliable")


class _ToEvents(logging.Handler):
    def __init__(self, sink: EventSink):
        super().__init__(level=logging.WARNING)
        self.sink = sink
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().strip()
        if not message or any(noise in message for noise in _NOISE) or message in self.seen:
            return
        self.seen.add(message)
        source = record.name.split(".")[0]
        if source == "py":
            message = _short_python_warning(message)
        self.sink(WarningIssued(message=message, source=source))


def _short_python_warning(message: str) -> str:
    """'path/file.py:12: UserWarning: text\\n  code' -> 'UserWarning: text'."""
    first = message.splitlines()[0]
    parts = first.split(": ", 1)
    return parts[1] if len(parts) == 2 and ".py:" in parts[0] else first


@contextlib.contextmanager
def library_output_as_events(sink: EventSink) -> Iterator[None]:
    import datasets
    import transformers

    handler = _ToEvents(sink)
    saved = []
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers = [handler]
        logger.propagate = False
    logging.captureWarnings(True)
    bars = datasets.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for logger, handlers, propagate in saved:
            logger.handlers = handlers
            logger.propagate = propagate
        if bars:
            datasets.enable_progress_bars()
            transformers.utils.logging.enable_progress_bar()
