"""Bad input of every kind a person brings: each gets a message that says where and what to do, before any
model weights load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import write_jsonl
from tuneterm.config import RunConfig, config_from_mapping
from tuneterm.data.formats import FormatUnknown
from tuneterm.data.pipeline import read_examples
from tuneterm.data.prepare import prepare
from tuneterm.data.tokenizer import load_tokenizer
from tuneterm.engine.rundir.layout import create_run_dir
from tuneterm.errors import DataError, LoadError, Location, RunDirError
from tuneterm.plan.planner import startup_problems

GOOD = {"messages": [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "4."}]}


def good(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"What is {i} plus 2?"},
                         {"role": "assistant", "content": f"{i + 2}."}]}


def config_for(train: Path, **data: object) -> RunConfig:
    return config_from_mapping({"model": {"path": "unused"}, "data": {"train": str(train), "val_size": 0, **data},
                                "training": {"max_length": 64}})


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from tuneterm.demo import CHAT_TEMPLATE, build_tokenizer

    return build_tokenizer(["What is 2 plus 2?", "4.", "hello"] * 10, CHAT_TEMPLATE, vocab_size=300)


@pytest.mark.parametrize("broken_line", [1, 5, 10])
def test_malformed_json_is_named_at_the_first_a_middle_and_the_last_line(tmp_path: Path, broken_line: int) -> None:
    lines = [json.dumps(good(i)) for i in range(10)]
    lines[broken_line - 1] = '{"messages": [{"role": "user", "content": "cut'
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report, stream = read_examples(str(path))
    assert len(list(stream)) == 9
    [problem] = report.invalid.items
    assert problem.location == Location(str(path), broken_line)
    assert problem.message == ("malformed JSON: the string that starts at column 43 is not closed before the line "
                               "ends; was the line cut short?") and problem.reason == "malformed JSON"


@pytest.mark.parametrize("line, message", [
    ('{"messages": [{"role": "user", "content": "hi"}', "the line ends at column 48 before the JSON is complete "
                                                         "(Expecting ',' delimiter); was it cut short?"),
    ('{"messages": [{"role": "user", "content": "hi"}]}}', "at column 50: Extra data"),
    ('{"messages": [{"role": "user" "content": "hi"}]}', "at column 31: Expecting ',' delimiter"),
])
def test_malformed_json_names_the_column_where_it_breaks_or_where_the_line_ends(tmp_path: Path, line: str,
                                                                                   message: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(good(0)) + "\n" + line + "\r\n")
    report, stream = read_examples(str(path))
    assert len(list(stream)) == 1
    [problem] = report.invalid.items
    assert problem.message == f"malformed JSON{'' if message.startswith('at') else ':'} {message}"


def test_a_raw_control_character_in_a_string_is_named_with_its_column(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(good(0)), '{"messages": [{"role": "user", "content": "a\tb"}]}']  # a tab typed in the text
    path.write_text("\n".join(lines) + "\n")
    report, stream = read_examples(str(path))
    assert len(list(stream)) == 1
    [problem] = report.invalid.items
    assert problem.location == Location(str(path), 2)
    assert problem.message == "malformed JSON at column 45: Invalid control character"


def test_windows_line_endings_read_as_the_text_they_are(tmp_path: Path) -> None:
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b"".join(json.dumps(good(i)).encode() + b"\r\n" for i in range(3)))
    report, stream = read_examples(str(path))
    examples = list(stream)
    assert not report.invalid and examples[0].chat.messages[1]["content"] == "2."


def test_mixed_formats_in_one_file_say_which_columns_were_found(tmp_path: Path) -> None:
    rows = [good(i) for i in range(5)] + [{"instruction": f"Say {i}", "output": str(i)} for i in range(5)]
    with pytest.raises(FormatUnknown) as caught:
        read_examples(str(write_jsonl(tmp_path / "mixed.jsonl", rows)))
    assert caught.value.columns == {"messages": 5, "instruction": 5, "output": 5}
    assert "Set data.format, and data.columns" in caught.value.summary


def test_invalid_records_are_counted_by_reason(tokenizer, tmp_path: Path) -> None:
    rows = [good(i) for i in range(20)]
    lines = [json.dumps(r) for r in rows] + ["not json"] * 3 + [json.dumps({"messages": [{"role": "robot",
                                                                                         "content": "x"}]})] * 2
    path = tmp_path / "some-bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as caught:
        prepare(config_for(path), tokenizer, None)
    assert caught.value.summary.startswith("data.train: 5 of 25 records are not valid messages data (3 malformed "
                                           "JSON, 2 unknown role;")
    assert [p.location.line for p in caught.value.problems] == [21, 22, 23, 24, 25]


def test_an_example_longer_than_max_length_never_trains_on_nothing(tokenizer, tmp_path: Path) -> None:
    long_question = "What is 2 plus 2? " * 40
    rows = [good(i) for i in range(19)] + [{"messages": [{"role": "user", "content": long_question},
                                                                  {"role": "assistant", "content": "4."}]}]
    data = prepare(config_for(write_jsonl(tmp_path / "one-long.jsonl", rows)), tokenizer, None)
    assert len(data.train.examples) == 19, "the example whose reply was cut away is left out"
    assert all(e.trained_tokens > 0 for e in data.train.examples)
    assert any("1 of 20 training examples are longer than max_length 64" in w and "left out" in w
               for w in data.warnings)


def test_a_tokenizer_without_chat_template_or_pad_token_still_trains_the_end_of_each_reply(tokenizer,
                                                                                           tmp_path: Path) -> None:
    bare = tmp_path / "bare-tokenizer"
    tokenizer.save_pretrained(bare)
    settings = json.loads((bare / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    settings.pop("pad_token", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(settings))
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    config = config_from_mapping({"model": {"path": str(bare)}, "data": {"train": str(tmp_path / "x.jsonl")}})
    loaded, warnings = load_tokenizer(config)
    assert any("has no chat template" in w and "### Instruction / ### Response" in w for w in warnings)
    assert loaded.pad_token == loaded.eos_token, "no pad token: EOS pads"

    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    data = prepare(config_for(write_jsonl(tmp_path / "d.jsonl", [good(i) for i in range(3)]),
                              max_samples=3), loaded, None)
    short, longer = sorted(data.train.examples, key=lambda e: e.length)[:2]
    batch = DataCollatorForLanguageModeling(pad_token_id=loaded.pad_token_id)(
        [{"input_ids": e.input_ids.tolist(), "labels": e.labels.tolist()} for e in (short, longer)])
    eos = loaded.eos_token_id
    row = batch["labels"][0].tolist()
    assert eos in row, "the EOS that ends the reply is trained even though it is also the pad token"
    assert row[-(batch["input_ids"].shape[1] - short.length):] in ([], [-100] * (batch["input_ids"].shape[1]
                                                                                 - short.length)), "padding is not"


def test_a_missing_model_directory_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "t.jsonl", [GOOD])
    config = config_from_mapping({"model": {"path": str(tmp_path / "modle")}, "data": {"train": str(train)}})
    [problem] = startup_problems(config)
    assert str(problem) == f"model.path: {tmp_path / 'modle'}: no such directory, and not a hub id (org/name)"


def test_a_model_without_its_files_or_with_corrupt_weights_says_so(tiny_model: Path, tmp_path: Path) -> None:
    only_config = tmp_path / "only-config"
    only_config.mkdir()
    shutil.copy(tiny_model / "config.json", only_config / "config.json")
    with pytest.raises(LoadError, match=f"model.path: {only_config} is not a model directory: it has no tokenizer "
                                        r"files \(tokenizer.json, tokenizer_config.json\)"):
        load_tokenizer(config_from_mapping({"model": {"path": str(only_config)}}))

    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_model, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    from tuneterm.engine.loading import load_model
    from tuneterm.hardware import CPU

    with pytest.raises(LoadError, match=f"model.path: {corrupt}: cannot load it"):
        load_model(config_from_mapping({"model": {"path": str(corrupt)}}), "fp32", CPU)


def test_a_runs_location_that_is_a_file_or_cannot_be_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_from_mapping({"model": {"path": "m"}})
    a_file = tmp_path / "runs"
    a_file.write_text("not a directory")
    with pytest.raises(RunDirError, match=r"the runs directory \(--runs-dir\): cannot create .*runs: it \(or a folder "
                                          "above it\\) is a file, not a directory"):
        create_run_dir(config, a_file)

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(RunDirError, match="cannot create .*: Permission denied. Choose a writable directory"):
        create_run_dir(config, tmp_path / "elsewhere")
