"""bench/gpu_acceptance.py --dry-run: every part of the GPU acceptance through the same code on the CPU, tiny, so
that the script a lent GPU runs cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

from bench.gpu_acceptance import main


def test_the_dry_run_records_every_part(tmp_path: Path) -> None:
    assert main(["--dry-run", "--out", str(tmp_path)]) == 0, (tmp_path / "gpu_acceptance.md").read_text()
    rows = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    by = {(row["part"], row["what"]): row for row in rows}
    for method in ("lora", "qlora"):
        trained = by[("train", f"{method} Qwen3-0.6B")]
        assert trained["ok"] and trained["status"] == "completed" and trained["steps"] == trained["planned_steps"]
        assert trained["mfu"] == "n/a on CPU"
    assert {what for part, what in by if part == "speed"} >= {"bare TRL", "tuneterm headless",
                                                              "tuneterm with the monitor"}
    status = by[("speed", "monitor screens")]["status"]
    assert "tok/s" in status and "padding" in status and "MFU n/a on CPU" in status
    off, on = by[("packing", "packing off")], by[("packing", "packing on")]
    assert on["padding"] == 0.0 < off["padding"] and on["steps_per_epoch"] < off["steps_per_epoch"]
    oom = by[("oom", "forced OOM (a stand-in raised on the CPU)")]
    assert oom["ok"] and oom["reason"].startswith("Out of GPU memory during training at step 0. The plan's largest "
                                                  "parts: ")
    assert {"training.gradient_checkpointing": True} in oom["remedies"]
    assert by[("oom", "a run after it")]["ok"]
    assert any(part == "memory" and "plan" in row["result"] for (part, _), row in by.items())
    assert by[("nvml", "NVML")]["result"].startswith("no GPU: ")
    assert (tmp_path / "gpu_acceptance.md").read_text().startswith("| part | what | result |")
