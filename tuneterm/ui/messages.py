"""Messages that worker threads post to the screens (post_message is thread-safe and never waits).

Named as events: each says what happened. Progress messages say only the latest value, so a burst of them
collapses into one (can_replace); results are never dropped.
"""

from __future__ import annotations

from textual.message import Message

from tuneterm.data.summary import DataSummary
from tuneterm.errors import TuneTermError
from tuneterm.plan.catalog import ModelDescription, ModelEntry
from tuneterm.plan.model import ModelFacts
from tuneterm.work import Progress


class ModelsListed(Message):
    def __init__(self, entries: list[ModelEntry]):
        super().__init__()
        self.entries = entries


class ModelDescribed(Message):
    def __init__(self, description: ModelDescription):
        super().__init__()
        self.description = description


class ModelFactsRead(Message):
    """The model's parameter groups (stage 1 of planning), or why they cannot be read."""

    def __init__(self, path: str, facts: ModelFacts | None, error: TuneTermError | None = None):
        super().__init__()
        self.path, self.facts, self.error = path, facts, error


class DataProgressed(Message):
    def __init__(self, progress: Progress):
        super().__init__()
        self.progress = progress

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, DataProgressed)


class DataRead(Message):
    """The data summary (stage 2 of planning) for the data settings identified by `key`."""

    def __init__(self, key: tuple[object, ...], summary: DataSummary):
        super().__init__()
        self.key, self.summary = key, summary


class DataFailed(Message):
    def __init__(self, key: tuple[object, ...], error: TuneTermError):
        super().__init__()
        self.key, self.error = key, error


class DataCancelled(Message):
    pass
