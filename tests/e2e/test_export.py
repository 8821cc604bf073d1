"""Exports of a tiny run built the way the demo is (a Llama with a ChatML template and a byte-level BPE tokenizer
of its own), converted by llama.cpp's own converter and quantizer and checked in llama.cpp against the merged model.

These need the export extra (`pip install 'tuneterm[export]'`) and llama.cpp's converter: TUNETERM_LLAMA_CPP names
the source archive of the installed llama-cpp-python (`pip download --no-deps --no-binary :all:
llama-cpp-python==VERSION`), since tests never reach the network. .ci/run sets both up.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tuneterm.cli import main

llama_cpp = pytest.importorskip("llama_cpp", reason="the export extra is not installed: pip install '.[export]'")


@pytest.fixture(scope="module", autouse=True)
def converter_source() -> None:
    from tuneterm.engine.after.llamacpp import SOURCE_ENV

    if not os.environ.get(SOURCE_ENV):
        pytest.fail(f"{SOURCE_ENV} must name llama.cpp's converter (the llama-cpp-python source archive) for the "
                    "export tests: they never fetch it from the network")


@pytest.fixture(scope="module")
def run(finished_run, tmp_path_factory) -> Path:
    """A copy of the shared finished run: exports write their records into the run directory."""
    copy = tmp_path_factory.mktemp("exported") / finished_run.run_dir.name
    shutil.copytree(finished_run.run_dir, copy)
    return copy


def _gguf(out_dir: Path) -> Path:
    [found] = out_dir.glob("*.gguf")
    return found


def test_a_gguf_of_the_run_runs_in_llama_cpp_and_passes_the_round_trip_check(run, tmp_path) -> None:
    from tuneterm.engine.after.export import export, prepare
    from tuneterm.engine.after.report import read_exports

    out = tmp_path / "gguf"
    result = export(prepare(run, out, "gguf", "f16"))
    check = result.round_trip
    assert check is not None and check["passed"], check
    assert check["mean_kl"] < 1e-3 and check["same_top_token"] > 0.99
    assert check["answers"] and all(a["gguf_ended"] for a in check["answers"])  # each greedy answer ended itself
    assert check["identical_answers"] >= len(check["answers"]) - 1
    assert not check["token_mismatches"]  # llama.cpp tokenizes the eval prompts as transformers did
    gguf = _gguf(out)
    assert gguf.name.endswith("-f16.gguf") and gguf.read_bytes()[:4] == b"GGUF"
    model = llama_cpp.Llama(str(gguf), n_ctx=64, verbose=False)  # loadable as it is, by llama.cpp
    model.close()
    assert result.converter and result.converter.startswith("llama.cpp ")
    assert json.loads((out / "tuneterm_export.json").read_text())["converter"] == result.converter
    assert result.files == sorted(p.name for p in out.iterdir()) == sorted(
        [gguf.name, "llama.cpp.log", "round_trip.json", "tuneterm_export.json"])
    assert not list(tmp_path.glob(".gguf.partial-*"))  # the staging directory (with the merged model) is gone
    recorded = read_exports(run)
    assert recorded[-1]["out_dir"] == str(out) and recorded[-1]["passed"]
    card = (run / "README.md").read_text()
    assert "## Exports" in card and str(out) in card and "passed: KL divergence" in card


def test_ollama_export_writes_a_modelfile_beside_a_quantized_gguf(run, tmp_path, capsys) -> None:
    out = tmp_path / "ollama"
    assert main(["export", str(run), str(out), "--format", "ollama", "--quant", "q4_k_m"]) == 0
    printed = capsys.readouterr().out
    gguf = _gguf(out)
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{gguf.name}\n")
    assert '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert f"ollama create {run.name.lower()} -f {out / 'Modelfile'}" in printed
    # The tiny model's rows (64 values) do not fill q4_k's blocks of 256: llama.cpp's fallback is said, not hidden.
    assert "not a multiple of 256" in printed and "fell back from q4_K to" in printed
    assert "round-trip check" not in printed or "FAILED" not in printed
    assert json.loads((out / "round_trip.json").read_text())["passed"]


def test_a_gguf_made_from_another_adapter_fails_the_check(run, tmp_path) -> None:
    from tuneterm.engine.after.export import export, prepare
    from tuneterm.engine.after.generate import read_eval_samples
    from tuneterm.engine.after.merge import merge
    from tuneterm.engine.after.roundtrip import check_round_trip
    from tuneterm.work import Work

    # The same run at its first kept checkpoint: another adapter, trained on the same data for fewer steps.
    other = tmp_path / "other-run"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("checkpoint-*", "exports.json"))
    first = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[0]
    shutil.copy(first / "adapter_model.safetensors", other / "adapter_model.safetensors")
    other_gguf = _gguf(Path(export(prepare(other, tmp_path / "other-gguf", "gguf", "f16")).out_dir))

    merge(run, tmp_path / "merged")
    check = check_round_trip(other_gguf, "f16", tmp_path / "merged", read_eval_samples(run), Work())
    assert not check.passed
    assert check.mean_kl > 10 * check.tolerance
    assert any("KL divergence" in difference for difference in check.differences())


def test_a_failed_check_leaves_the_files_in_staging_and_says_what_differed(run, tmp_path, monkeypatch) -> None:
    from tuneterm.engine.after import roundtrip
    from tuneterm.engine.after.export import export, prepare
    from tuneterm.engine.after.report import read_exports
    from tuneterm.errors import ExportError

    monkeypatch.setitem(roundtrip.TOLERANCE, "f32", 0.0)  # no conversion is that exact: the real check must fail
    out = tmp_path / "strict"
    with pytest.raises(ExportError, match="did not pass the round-trip check: its next-token distribution differs"):
        export(prepare(run, out, "gguf", "f32"))
    assert not out.exists()
    [staging] = tmp_path.glob(".strict.partial-*")
    assert list((staging / "out").glob("*-f32.gguf")) and (staging / "merged" / "config.json").is_file()
    assert (staging / "out" / "llama.cpp.log").is_file()
    failed = read_exports(run)[-1]
    assert not failed["passed"] and failed["staging"] == str(staging)
    assert "FAILED: KL divergence" in (run / "README.md").read_text()


def test_the_adapter_gguf_applied_over_the_base_gguf_passes_the_check(run, tmp_path) -> None:
    from tuneterm.engine.after.export import export, prepare

    result = export(prepare(run, tmp_path / "adapter", "adapter-gguf"))
    assert result.round_trip is not None and result.round_trip["passed"]
    assert [p.name for p in (tmp_path / "adapter").glob("*.gguf")] == [f"{run.name}-adapter-f16.gguf"]
    assert "--lora" in result.next_step


def test_export_refuses_before_any_work(run, tmp_path) -> None:
    from tuneterm.engine.after.export import prepare
    from tuneterm.errors import RunDirError

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(RunDirError, match="exists and is not empty"):
        prepare(run, taken, "gguf")
    assert (taken / "keep.txt").read_text() == "mine"
    with pytest.raises(RunDirError, match="--quant is for GGUF"):
        prepare(run, tmp_path / "m", "merged", "q8_0")
    assert main(["export", str(run), str(tmp_path / "x"), "--format", "adapter-gguf", "--quant",
                 "q4_k_m"]) == 2


def test_push_says_at_once_that_the_hub_is_switched_off(run, capsys) -> None:
    import time

    started = time.monotonic()
    assert main(["push", str(run), "someone/tiny-adapter"]) == 1
    assert time.monotonic() - started < 5
    assert "switched off on this machine (HF_HUB_OFFLINE" in capsys.readouterr().err
    assert main(["push", str(run), "someone/tiny", "--what", "merged"]) == 2
    assert "has no merged export that passed its check" in capsys.readouterr().err


def test_without_the_export_extra_it_says_what_is_missing_and_how_to_install_it(run, tmp_path, monkeypatch,
                                                                               capsys) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # what an environment without llama-cpp-python imports
    assert main(["export", str(run), str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert "GGUF export needs llama-cpp-python (llama.cpp's runtime and quantizer), not installed here" in error
    assert "pip install 'tuneterm[export]'" in error and not (tmp_path / "out").exists()


def test_an_architecture_llama_cpp_cannot_convert_is_named_before_any_work(run, tiny_model, tmp_path) -> None:
    import yaml

    from tuneterm.engine.after.export import prepare
    from tuneterm.engine.after.llamacpp import find_converter
    from tuneterm.errors import ExportError

    # The same weights, declared as OPT (a causal LM transformers has and llama.cpp's converter does not convert).
    model = tmp_path / "opt-model"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "architectures": ["OPTForCausalLM"]}))
    assert "OPTForCausalLM" not in (find_converter().architectures or {"OPTForCausalLM"})
    other = tmp_path / "run"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("checkpoint-*"))
    settings = yaml.safe_load((other / "config.yaml").read_text())
    settings["model"]["path"] = str(model)
    (other / "config.yaml").write_text(yaml.safe_dump(settings))
    with pytest.raises(ExportError, match="OPTForCausalLM, is not one llama.cpp's converter .* converts"):
        prepare(other, tmp_path / "out", "gguf")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


# The app: the summary exports the run as a person would.
async def test_export_from_the_summary_shows_progress_is_cancelled_with_x_and_then_writes_a_checked_gguf(
        finished_run, tmp_path: Path) -> None:
    from textual.widgets import Input, Static

    from tests.ui.conftest import make_services, screen_of, wait_until
    from tuneterm.ui.app import Opening, make_app
    from tuneterm.ui.screens.dialogs import AskExport
    from tuneterm.ui.screens.summary import SummaryScreen

    tuned = tmp_path / "runs" / finished_run.run_dir.name  # a copy of its own: the export is recorded in it
    shutil.copytree(finished_run.run_dir, tuned)
    app = make_app(make_services(tmp_path / "runs"), Opening("monitor", run_dir=tuned))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, SummaryScreen) and app.screen.report is not None,
                         what="the summary")
        summary = screen_of(app, SummaryScreen)
        status = summary.query_one("#summary-status", Static)
        out = tmp_path / "runs" / f"{tuned.name}-gguf"
        for cancelled in (True, False):
            await pilot.press("e")
            await wait_until(pilot, lambda: isinstance(app.screen, AskExport), what="the export dialog")
            app.screen.query_one("#export-path", Input).focus()
            await pilot.press("enter")
            await wait_until(pilot, lambda: "Export: converting" in str(status.render()) or not summary.busy,
                             timeout=120, what="the conversion under way")
            if cancelled:
                assert summary.check_action("cancel_export", ())
                await pilot.press("x")
            await wait_until(pilot, lambda: not summary.busy, timeout=180, what="the export's end")
            text = str(status.render())
            if cancelled:
                assert "cancelled: nothing was written" in text
                assert not out.exists() and not list(out.parent.glob(f".{out.name}.partial-*"))
        assert "Checked in llama.cpp: KL divergence" in text and "Next: llama-cli -m" in text
        assert list(out.glob("*-q8_0.gguf"))
        await wait_until(pilot, lambda: any("round trip passed" in str(row.render())
                                            for row in summary.query("#summary-rows Static").results(Static)),
                         what="the export in the summary")
