"""The data layer: every source and format, validation that names the line, pre-flight checks, `tuneterm inspect`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import DATA, write_jsonl
from tuneterm.cli import main
from tuneterm.config import RunConfig, config_from_mapping
from tuneterm.data.formats import FormatUnknown
from tuneterm.data.inspect import inspect_data, report_to_json
from tuneterm.data.pipeline import read_examples
from tuneterm.data.prepare import prepare
from tuneterm.data.records import Record, iter_records
from tuneterm.demo import CHAT_TEMPLATE, build_tokenizer
from tuneterm.errors import DataError, Location

BAD = DATA / "bad"
HELLO = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.fixture(scope="module")
def tokenizer():
    corpus = ["What is the capital of France?", "The capital of France is Paris.", "hi", "hello"] * 5
    return build_tokenizer(corpus, CHAT_TEMPLATE, vocab_size=300)


def read_all(source: Path | str, fmt: str = "auto", columns: dict | None = None):
    report, stream = read_examples(str(source), fmt, columns)
    examples = list(stream)
    return report, examples


# The catalogue of broken files: each gives its message at its line (or row).
CATALOGUE = [
    ("malformed_json.jsonl", ":3", "malformed JSON: the line ends at column 48 before the JSON is complete"),
    ("not_utf8.jsonl", ":2", "not UTF-8 text (byte 47 of the line); re-save the file as UTF-8"),
    ("missing_messages.jsonl", ":3", "'messages' must be a non-empty list of {role, content} objects"),
    ("unknown_role.jsonl", ":2", "messages[1]: unknown role 'robot'"),
    ("ends_with_user.jsonl", ":3", "the conversation ends with a user turn"),
    ("not_alternating.jsonl", ":1", "messages[1] is 'user' where 'assistant' was expected"),
    ("non_text_content.jsonl", ":2", "'messages[1].content' must be text, got int '4'"),
    ("empty_content.jsonl", ":2", "'messages[1].content' is only whitespace"),
    ("not_an_object.jsonl", ":2", "expected a JSON object, got list"),
    ("bad_alpaca.json", ": row 1", "'output' is missing or empty"),
    ("bad_alpaca.json", ": row 2", "'history' must be a list of [instruction, response] pairs"),
    ("bad_sharegpt.jsonl", ":2", "conversations[1]: unknown role 'wizard'"),
    ("bad.csv", ":3", "'output' is missing or empty"),
    ("bad.csv", ":6", "1 more values than the 2 columns"),
]


@pytest.mark.parametrize("name, where, message", CATALOGUE, ids=[f"{c[0]}{c[1]}" for c in CATALOGUE])
def test_each_broken_file_names_its_line_and_what_is_wrong(name: str, where: str, message: str) -> None:
    report, _ = read_all(BAD / name)
    problems = [str(p) for p in report.invalid.items]
    assert any(p.startswith(f"{BAD / name}{where}: {message}") for p in problems), problems


def test_a_multi_line_csv_record_keeps_later_line_numbers_right() -> None:
    report, examples = read_all(BAD / "bad.csv")
    assert [e.location.where() for e in examples] == [f"{BAD / 'bad.csv'}:2", f"{BAD / 'bad.csv'}:4"]
    assert examples[1].chat.messages[0]["content"] == "Multi\nline"


def test_empty_file_unknown_columns_and_missing_paths() -> None:
    with pytest.raises(DataError, match="the file is empty"):
        read_all(BAD / "empty.jsonl")
    with pytest.raises(FormatUnknown, match=r"Columns found: question \(3/3\), answer \(3/3\).*data.columns") as caught:
        read_all(BAD / "wrong_columns.jsonl")
    assert caught.value.columns == {"question": 3, "answer": 3}, "the columns a screen offers to map"
    assert ("These columns look like alpaca data: data.format: alpaca, data.columns: {instruction: question, "
            "output: answer}; check it with: tuneterm inspect " + str(BAD / "wrong_columns.jsonl") + " --model MODEL "
            "--format alpaca --columns '{instruction: question, output: answer}'") in str(caught.value)
    with pytest.raises(DataError, match="no such file or directory"):
        read_all(BAD / "missing.jsonl")
    with pytest.raises(DataError, match="hub cannot be reached"):
        read_all("some-org/some-dataset")


def test_duplicates_are_found_and_point_at_the_first(tmp_path: Path) -> None:
    report, examples = read_all(BAD / "duplicates.jsonl")
    assert len(examples) == 2
    assert [str(p) for p in report.duplicates.items] == [
        f"{BAD / 'duplicates.jsonl'}:2: duplicate of {BAD / 'duplicates.jsonl'}:1",
        f"{BAD / 'duplicates.jsonl'}:4: duplicate of {BAD / 'duplicates.jsonl'}:1"]


def test_every_format_becomes_the_same_conversation(tmp_path: Path) -> None:
    expected = [{"role": "system", "content": "Be brief."}, *HELLO]
    sources = {
        "messages": write_jsonl(tmp_path / "m.jsonl", [{"messages": expected}]),
        "sharegpt": write_jsonl(tmp_path / "s.jsonl", [{"conversations": [
            {"from": "system", "value": "Be brief."}, {"from": "human", "value": "hi"},
            {"from": "gpt", "value": "hello"}]}]),
        "alpaca": write_jsonl(tmp_path / "a.jsonl", [{"system": "Be brief.", "instruction": "hi", "output": "hello"}]),
        "prompt_completion": write_jsonl(tmp_path / "p.jsonl", [{"prompt": expected[:2],
                                                                 "completion": [expected[2]]}]),
    }
    for fmt, path in sources.items():
        report, [example] = read_all(path)
        assert report.detection.format == fmt
        assert example.chat.messages == expected, fmt
    _, [text] = read_all(write_jsonl(tmp_path / "t.jsonl", [{"text": "Paris is in France."}]))
    assert text.chat.messages == [{"role": "text", "content": "Paris is in France."}]
    _, [raw] = read_all(write_jsonl(tmp_path / "r.jsonl", [{"prompt": "2+2=", "completion": "4"}]))
    assert raw.chat.messages == [{"role": "prompt", "content": "2+2="}, {"role": "completion", "content": "4"}]


def test_columns_and_format_can_be_overridden(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "hi", "answer": "hello"}])
    report, [example] = read_all(path, "alpaca", {"instruction": "question", "output": "answer"})
    assert report.detection.evidence == "set by data.format"
    assert example.chat.messages == HELLO
    report, _ = read_all(path, "auto", {"instruction": "question", "output": "answer"})
    assert report.detection.format == "alpaca" and "'question' and 'answer'" in report.detection.evidence


@pytest.mark.parametrize("columns, fmt, mapping", [
    (("question", "answer"), "alpaca", {"instruction": "question", "output": "answer"}),
    (("Question", "Context", "Answer"), "alpaca", {"instruction": "Question", "input": "Context", "output": "Answer"}),
    (("instruction", "response"), "alpaca", {"output": "response"}),
    (("prompt", "response", "id"), "alpaca", {"instruction": "prompt", "output": "response"}),
    (("Question Text", "answer_str"), "alpaca", {"instruction": "Question Text", "output": "answer_str"}),
    (("input", "output"), "prompt_completion", {"prompt": "input", "completion": "output"}),
    (("content",), "text", {"text": "content"}),
    (("chat",), "messages", {"messages": "chat"}),
    (("id", "label"), None, None),
])
def test_the_likely_format_and_mapping_are_guessed_from_the_column_names(columns: tuple[str, ...], fmt: str | None,
                                                                         mapping: dict[str, str] | None) -> None:
    from tuneterm.data.columns import guess_columns
    from tuneterm.data.formats import FIELDS

    guess = guess_columns({name: 10 for name in columns}, FIELDS)
    assert (guess.format, guess.columns) == (fmt, mapping) if guess else (fmt, mapping) == (None, None)


def test_the_inspect_line_of_a_mapping_reads_the_data_that_way(tmp_path: Path, tokenizer,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    import shlex

    from tuneterm.data.columns import inspect_command

    model = tmp_path / "tokenizer-only"
    tokenizer.save_pretrained(model)
    data = tmp_path / "my data.csv"
    data.write_text("question,answer\nWhat is the capital of France?,Paris.\nhi,hello\n")
    line = inspect_command(str(data), str(model), "alpaca", {"instruction": "question", "output": "answer"})
    assert main(shlex.split(line)[1:]) == 0
    assert "alpaca (set by data.format)" in capsys.readouterr().out


def test_parquet_csv_saved_datasets_and_directories(tmp_path: Path) -> None:
    from datasets import Dataset

    rows = [{"instruction": f"Say {i}", "output": str(i)} for i in range(5)]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "rows.parquet"))
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "folder").mkdir()
    write_jsonl(tmp_path / "folder" / "a.jsonl", rows[:2])
    write_jsonl(tmp_path / "folder" / "b.jsonl", rows[2:])
    (tmp_path / "rows.csv").write_text("instruction,output\n" + "".join(f"Say {i},{i}\n" for i in range(5)))
    for source in ("rows.parquet", "saved", "folder", "rows.csv"):
        report, examples = read_all(tmp_path / source)
        assert report.detection.format == "alpaca" and len(examples) == 5, source
        assert examples[4].chat.messages[1]["content"] == "4"
    _, examples = read_all(tmp_path / "rows.parquet")
    assert examples[3].location == Location(str(tmp_path / "rows.parquet"), row=3)
    records = [r for r in iter_records(tmp_path / "folder") if isinstance(r, Record)]
    assert records[2].location == Location(str(tmp_path / "folder" / "b.jsonl"), 1)


def config_for(train: Path, **data: object) -> RunConfig:
    return config_from_mapping({"model": {"path": "unused"}, "data": {"train": str(train), "val_size": 0, **data},
                                "training": {"max_length": 64}})


def test_strict_stops_with_the_full_report_and_lenient_leaves_out_and_says(tokenizer, tmp_path: Path) -> None:
    rows = [{"messages": HELLO}] * 1 + [{"messages": [{"role": "user", "content": f"q{i}"},
                                                      {"role": "assistant", "content": f"a{i}"}]} for i in range(6)]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows + [{"messages": [{"role": "user", "content": "x"}]}, {"oops": 1}])
    with pytest.raises(DataError) as caught:
        prepare(config_for(path), tokenizer, None)
    assert "2 of 9 records are not valid messages data" in caught.value.summary
    assert [p.location for p in caught.value.problems] == [Location(str(path), 8), Location(str(path), 9)]
    data = prepare(config_for(path, strict=False), tokenizer, None)
    assert len(data.train.examples) == 7
    assert any("2 of 9 records are not valid messages data" in w and "left out" in w for w in data.warnings)


def test_responses_that_would_be_cut_away_block_the_run(tokenizer, tmp_path: Path) -> None:
    long_prompt = " ".join(["What is the capital of France?"] * 30)
    path = write_jsonl(tmp_path / "long.jsonl", [{"messages": [{"role": "user", "content": long_prompt},
                                                               {"role": "assistant", "content": "Paris."}]}] * 1
                       + [{"messages": [{"role": "user", "content": f"{long_prompt} {i}"},
                                        {"role": "assistant", "content": "Paris."}]} for i in range(4)])
    with pytest.raises(DataError, match=r"training.max_length: 5 of 5 training examples lose their whole response "
                                        r"at max_length 64: raise it \(the data's 99th percentile suggests"):
        prepare(config_for(path), tokenizer, None)


def test_trained_tokens_covering_prompt_text_block_the_run(tmp_path: Path) -> None:
    # No separator between turns, and a tokenizer that learned "abcdef" as one token: the reply "def" cannot be
    # trained without also training the prompt's "abc".
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}{{ eos_token }}"
    merging = build_tokenizer(["abcdef"] * 50, template, vocab_size=300)
    path = write_jsonl(tmp_path / "merge.jsonl", [{"messages": [{"role": "user", "content": "abc"},
                                                                {"role": "assistant", "content": "def"}]}])
    with pytest.raises(DataError, match="trained tokens include prompt text") as caught:
        prepare(config_for(path), merging, None)
    assert "trained tokens cover prompt text 'abc'" in caught.value.problems[0].message


def test_plain_text_trains_every_token_and_ends_with_eos(tokenizer, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "facts.jsonl", [{"text": "The capital of France is Paris."}])
    data = prepare(config_for(path), tokenizer, None)
    [example] = data.train.examples
    assert (example.labels == example.input_ids).all()
    assert tokenizer.decode(example.input_ids[-1:].tolist()) == tokenizer.eos_token


def test_inspect_report_and_json(tokenizer, tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "What is the capital of France?" + " x" * i},
                          {"role": "assistant", "content": "The capital of France is Paris."}]} for i in range(40)]
    path = write_jsonl(tmp_path / "chat.jsonl", rows + [{"messages": [{"role": "user", "content": "hi"}]}])
    report = inspect_data(str(path), tokenizer, max_length=48, samples=2)
    as_json = report_to_json(report)
    assert as_json["format"] == "messages" and as_json["examples"] == 40
    assert as_json["invalid"] == [{"file": str(path), "line": 41,
                                   "message": "the conversation ends with a user turn; the last turn must be the "
                                              "assistant's reply to train on"}]
    lengths = as_json["token_lengths"]
    assert lengths["p50"] <= lengths["p90"] <= lengths["p95"] <= lengths["p99"] <= lengths["max"]
    assert sum(b["count"] for b in lengths["histogram"]) == 40
    assert as_json["suggested_max_length"] % 64 == 0 and as_json["suggested_max_length"] >= lengths["p99"]
    token_counts = [len(tokenizer.apply_chat_template(row["messages"], tokenize=True)["input_ids"]) for row in rows]
    assert as_json["truncated_examples"] == sum(count > 48 for count in token_counts) > 0
    assert as_json["preview"][0]["trained_segments"] == ["The capital of France is Paris.<|im_end|>"]
    assert as_json["preview"][0]["trained_tokens"] < as_json["preview"][0]["total_tokens"]
    assert report.blocking and "1 of 41 records are not valid" in report.blocking[0]


def test_inspect_command(tmp_path: Path, capsys: pytest.CaptureFixture[str], tokenizer) -> None:
    model = tmp_path / "tokenizer-only"
    tokenizer.save_pretrained(model)  # a directory with only tokenizer files: enough for inspect
    path = write_jsonl(tmp_path / "ok.jsonl", [{"messages": HELLO}, {"messages": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."}]}])
    assert main(["inspect", str(path), "--model", str(model), "--samples", "1"]) == 0
    text = capsys.readouterr().out
    assert "Format    messages" in text and "⟪hello<|im_end|>⟫" in text and "p99" in text
    assert main(["inspect", str(path), "--model", str(model), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 2
    assert main(["inspect", str(BAD / "unknown_role.jsonl"), "--model", str(model)]) == 1
    assert "invalid " in capsys.readouterr().out
