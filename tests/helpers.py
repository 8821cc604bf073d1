"""Small helpers shared by the test modules."""

from __future__ import annotations

import json
from pathlib import Path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path

TESTS = Path(__file__).parent
DATA = TESTS / "data"
"""Files the tests ship: broken datasets (data/bad) and real models' config.json (data/model_configs)."""
ROOT = TESTS.parent
