"""After the run, on the tiny model: chat with and without the adapter, the stop check, merging, comparing."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import DATA, built_once, shared_by_the_workers
from tuneterm.cli import main


def _train_question(chat_data: dict) -> str:
    first = json.loads(chat_data["train"].read_text().splitlines()[0])["messages"]
    return next(m["content"] for m in first if m["role"] == "user")


def test_the_tuned_model_answers_a_trained_prompt_differently_from_its_base(finished_run, chat_data) -> None:
    from tuneterm.engine.after.generate import GenerationSettings, TunedModel

    model = TunedModel.load(finished_run.run_dir)
    ids = model.prompt_ids(_train_question(chat_data))
    streamed: list[str] = []
    tuned = model.generate(ids, GenerationSettings(max_new_tokens=24), adapter=True, on_text=streamed.append)
    base = model.generate(ids, GenerationSettings(max_new_tokens=24), adapter=False)
    assert tuned.text != base.text
    assert "".join(streamed) == tuned.text  # what streamed is the answer
    again = model.generate(ids, GenerationSettings(max_new_tokens=24), adapter=True)
    assert again.text == tuned.text  # greedy, and the adapter is back on after the base's answer


def test_chat_cli_answers_one_prompt_with_both_models(finished_run, chat_data, capsys) -> None:
    code = main(["chat", str(finished_run.run_dir), "--prompt", _train_question(chat_data), "--compare-base",
                 "--max-new-tokens", "16"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("[tuned] ") and "\n[base] " in out


@pytest.fixture(scope="session")
def silent_base(tmp_path_factory: pytest.TempPathFactory, chat_data: dict) -> Path:
    """A base model that never saw an end token in pretraining: only fine-tuning can teach it to stop."""
    def build(directory: Path) -> None:
        from tuneterm.demo import CHAT_TEMPLATE, build_model, build_tokenizer

        corpus = [m["content"] for path in chat_data.values()
                  for line in path.read_text().splitlines() for m in json.loads(line)["messages"]]
        build_model(build_tokenizer(corpus, CHAT_TEMPLATE, vocab_size=400), corpus, directory, hidden_size=64,
                    layers=2, steps=150, ends_text=False)

    return built_once(shared_by_the_workers(tmp_path_factory) / "silent-base", build)


def _stop_checked(silent_base: Path, chat_data: dict, tmp_path: Path):
    from tuneterm.config import config_from_mapping
    from tuneterm.engine.after.stopcheck import read_stop_check
    from tuneterm.engine.run.plans import new_run
    from tuneterm.engine.run.runner import run

    config = {"method": "lora", "model": {"path": str(silent_base)},
              "data": {"train": str(chat_data["train"]), "eval": str(chat_data["eval"])},
              "lora": {"r": 8, "lora_alpha": 16},
              "training": {"learning_rate": 3e-3, "num_train_epochs": 6, "per_device_train_batch_size": 8,
                           "gradient_accumulation_steps": 2, "gradient_checkpointing": False, "eval_steps": 5}}
    plan = new_run(config_from_mapping(copy.deepcopy(config)), tmp_path / "runs")
    run(plan)
    return plan.run_dir, read_stop_check(plan.run_dir)


def test_the_stop_check_passes_a_model_taught_to_stop(silent_base, chat_data, tmp_path) -> None:
    run_dir, check = _stop_checked(silent_base, chat_data, tmp_path)
    assert check is not None and check["checked"] == 5
    assert check["passed"], check["runaway"]
    assert "every answer ended" in (run_dir / "README.md").read_text()


def test_the_stop_check_flags_a_model_trained_with_its_end_of_turn_masked(silent_base, chat_data, tmp_path,
                                                                          monkeypatch) -> None:
    import tuneterm.data.chat as chat

    # Labels that stop before the end-of-turn token, as a collator that masks EOS (or a template mismatch) makes.
    monkeypatch.setattr(chat, "special_after", lambda text, end, special: None)
    monkeypatch.setattr(chat, "_ends_with_special", lambda text, end, special: False)
    # Data of its own: the same files, prepared unmasked by another test, would be trained as they were prepared.
    own = {name: Path(shutil.copy(path, tmp_path / f"masked-{name}.jsonl")) for name, path in chat_data.items()}
    run_dir, check = _stop_checked(silent_base, own, tmp_path)
    assert check is not None and not check["passed"]
    assert len(check["runaway"]) >= 4
    assert "masked out of the labels" in check["causes"][0]
    assert "answers never ended" in (run_dir / "README.md").read_text()


def test_the_merged_model_gives_the_logits_of_base_plus_adapter(finished_run, tmp_path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tuneterm.engine.after.generate import read_eval_samples
    from tuneterm.engine.after.merge import TOLERANCE, merge

    result = merge(finished_run.run_dir, tmp_path / "merged")
    assert result.passed and result.dtype == "float32"
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    base = AutoModelForCausalLM.from_pretrained(finished_run.config["model"]["path"])
    with_adapter = PeftModel.from_pretrained(base, str(finished_run.run_dir))
    ids = torch.tensor([read_eval_samples(finished_run.run_dir)[0].prompt_ids])
    with torch.no_grad():
        expected, actual = with_adapter(input_ids=ids).logits, merged(input_ids=ids).logits
        plain = with_adapter.get_base_model()
        with with_adapter.disable_adapter():
            untuned = plain(input_ids=ids).logits
    assert (actual - expected).abs().max() <= TOLERANCE["float32"] * expected.abs().max()
    assert (actual - untuned).abs().max() > 1e-3  # the adapter is in the merged weights
    assert json.loads((tmp_path / "merged" / "generation_config.json").read_text())["eos_token_id"] is not None

    # Half strength is the average of the base and the fully merged weights (alpha scaling).
    merge(finished_run.run_dir, tmp_path / "half", scale=0.5)
    half = AutoModelForCausalLM.from_pretrained(tmp_path / "half").state_dict()
    full, original = merged.state_dict(), AutoModelForCausalLM.from_pretrained(
        finished_run.config["model"]["path"]).state_dict()
    name = next(k for k in full if "q_proj" in k)
    assert torch.allclose(half[name], (original[name] + full[name]) / 2, atol=1e-6)


def test_merging_never_writes_into_a_non_empty_directory(finished_run, tmp_path) -> None:
    from tuneterm.errors import RunDirError

    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not empty"):
        from tuneterm.engine.after.merge import merge

        merge(finished_run.run_dir, target)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_tuneterm_merge_prints_its_own_lines_and_no_library_notices(finished_run, tmp_path) -> None:
    import subprocess
    import sys

    # A process of its own, as a person runs it: no test harness between the libraries and the terminal.
    done = subprocess.run([sys.executable, "-m", "tuneterm", "merge", str(finished_run.run_dir), str(tmp_path / "m")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Merged model:" in done.stdout and "loading the base model" in done.stdout
    assert done.stderr == "", "transformers' deprecation notices are routed as a run routes them: not onto the screen"


def test_compare_writes_one_curve_per_run_and_lists_what_differs(finished_run, tmp_path, capsys) -> None:
    from tuneterm.engine.after.compare import comparison_figure, load_curves

    recorded = tmp_path / "recorded-run"
    shutil.copytree(DATA / "recorded-run", recorded)
    runs = [finished_run.run_dir, recorded]
    figure = comparison_figure(load_curves(runs))
    train_axes = figure.axes[0]
    assert len(train_axes.lines) == 2
    assert train_axes.lines[0].get_color() != train_axes.lines[1].get_color()
    assert main(["compare", *map(str, runs), "--out", str(tmp_path / "runs.png")]) == 0
    assert (tmp_path / "runs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Settings that differ:" in capsys.readouterr().out


def test_a_finished_run_has_a_run_card(finished_run) -> None:
    card = (finished_run.run_dir / "README.md").read_text()
    assert card.startswith("---\nbase_model: ")
    assert "library_name: peft" in card
    assert "best eval loss" in card and "AutoPeftModelForCausalLM.from_pretrained" in card
    assert f"tuneterm chat {finished_run.run_dir}" in card
