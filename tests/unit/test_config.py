"""The run config: defaults with reasons, overrides, and messages that name the file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tuneterm.config import RunConfig, check_value, load_config
from tuneterm.errors import ConfigError, Location


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


MINIMAL = """\
model:
  path: some/model
data:
  train: train.jsonl
"""


def problems_of(path: Path, *overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides=overrides)
    return [str(p) for p in caught.value.problems]


def test_defaults_are_the_guides_recommendations_and_are_marked(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.method == "lora"
    assert config.get("training.learning_rate") == 2e-4
    assert config.get("lora.r") == 16 and config.get("lora.lora_alpha") == 16
    assert config.get("lora.lora_dropout") == 0.0
    assert config.get("lora.target_modules") == "all-linear"
    assert config.get("training.weight_decay") == 0.01
    assert config.get("training.lr_scheduler_type") == "cosine"
    assert config.get("training.seed") == 3407
    assert config.get("training.per_device_train_batch_size") * config.get("training.gradient_accumulation_steps") == 16
    assert config.get("training.early_stopping_patience") == 3
    assert 0.05 <= config.get("training.warmup_steps") <= 0.1
    assert "training.learning_rate" in config.defaulted
    assert "model.path" not in config.defaulted
    text = config.to_yaml()
    assert "learning_rate: 0.0002  # default:" in text
    assert "path: some/model\n" in text


def test_method_changes_method_specific_defaults(tmp_path: Path) -> None:
    qlora = load_config(write(tmp_path, MINIMAL + "method: qlora\n"))
    assert qlora.get("training.optim") == "paged_adamw_8bit"
    assert qlora.get("quantization.bnb_4bit_quant_type") == "nf4"
    assert qlora.get("quantization.bnb_4bit_use_double_quant") is True
    full = load_config(write(tmp_path, MINIMAL + "method: full\n"))
    assert full.get("training.learning_rate") == 2e-5
    assert full.get("lora.r") is None and full.get("quantization.load_in_4bit") is None


def test_set_overrides_win_and_yaml_scientific_notation_is_a_number(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "training:\n  learning_rate: 2e-4\n")
    config = load_config(path, overrides=["training.learning_rate=1e-4", "lora.r=32"])
    assert config.get("training.learning_rate") == 1e-4
    assert config.get("lora.r") == 32
    assert "lora.r" not in config.defaulted


def test_resolved_config_round_trips_through_yaml(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), overrides=["training.max_steps=7"])
    resolved = config.resolved({"training.max_length": (256, "from the data")})
    saved = tmp_path / "saved.yaml"
    resolved.save(saved)
    assert "max_length: 256  # derived: from the data" in saved.read_text()
    again = load_config(saved)
    assert again.values == resolved.values


def test_misspelt_key_names_file_line_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "training:\n  seed: 1\n  learnig_rate: 1e-4\n")
    assert problems_of(path) == [f"{path}:7: training.learnig_rate: unknown key; did you mean learning_rate?"]


def test_misspelt_pass_through_key_suggests_the_sftconfig_field(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "training:\n  max_grad_nrom: 0.3\n")
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:6: training.max_grad_nrom: unknown key; did you mean max_grad_norm?")


def test_valid_sftconfig_fields_pass_through_with_type_checks(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL + "training:\n  max_grad_norm: 0.3\n  neftune_noise_alpha: 5\n"))
    assert config.get("training.max_grad_norm") == 0.3
    [problem] = problems_of(write(tmp_path, MINIMAL + "training:\n  max_grad_norm: lots\n"))
    assert "training.max_grad_norm: expected" in problem and "'lots'" in problem


def test_wrong_type_and_impossible_values(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "training:\n  per_device_train_batch_size: two\n  learning_rate: -1\n"
                                     "  warmup_steps: 1.5\n")
    problems = problems_of(path)
    assert f"{path}:6: training.per_device_train_batch_size: expected an integer, got 'two'" in problems
    assert f"{path}:7: training.learning_rate: -1.0 must be greater than 0" in problems
    assert any(p.startswith(f"{path}:8: training.warmup_steps: 1.5 a float is a fraction") for p in problems)


def test_choices_unknown_method_and_renamed_keys(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "method: qlora4\ntraining:\n  warmup_ratio: 0.1\n  precision: bf61\n")
    problems = problems_of(path)
    assert f"{path}:5: method: 'qlora4' is not one of lora, qlora, full" in problems
    assert any(p.startswith(f"{path}:7: training.warmup_ratio: transformers 5 folded warmup_ratio") for p in problems)
    assert any(p.startswith(f"{path}:8: training.precision: 'bf61' is not one of auto, bf16, fp16, fp32; did you mean "
                            "bf16?") for p in problems)


def test_scheduler_and_optimizer_names_are_checked_against_transformers(tmp_path: Path) -> None:
    from transformers import SchedulerType
    from transformers.training_args import OptimizerNames

    from tuneterm.config import OPTIMIZER_NAMES, SCHEDULER_NAMES

    assert SCHEDULER_NAMES == tuple(s.value for s in SchedulerType)
    assert OPTIMIZER_NAMES == tuple(o.value for o in OptimizerNames)
    path = write(tmp_path, MINIMAL + "training:\n  lr_scheduler_type: cosyne\n  optim: adamw_torch_fuse\n")
    assert problems_of(path) == [
        f"{path}:6: training.lr_scheduler_type: 'cosyne' is not one of {', '.join(SCHEDULER_NAMES)}; did you mean "
        "cosine?",
        f"{path}:7: training.optim: 'adamw_torch_fuse' is not one of the 41 names transformers accepts; did you mean "
        "adamw_torch_fused?"]


def test_section_that_does_not_apply_to_the_method(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "quantization:\n  bnb_4bit_quant_type: fp4\n")
    assert problems_of(path) == [f"{path}:6: quantization.bnb_4bit_quant_type: applies to method qlora, but "
                                 "method is lora"]


def test_missing_required_keys_and_bad_yaml(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "method: lora\n"))
    assert any(p.startswith("model.path: required") for p in problems)
    # A config without data is valid: it plans the model and the memory (a run refuses it, see the e2e tests).
    assert load_config(write(tmp_path, "model:\n  path: some/model\n")).get("data.train") is None
    path = write(tmp_path, "model:\n  path: [unclosed\n")
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:") and "not valid YAML" in problem


def test_override_problems_name_the_argument(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    assert problems_of(path, "training.lerning_rate=1e-4") == [
        "--set training.lerning_rate=1e-4: training.lerning_rate: unknown key; did you mean learning_rate?"]
    assert problems_of(path, "nonsense") == [
        "--set nonsense: expected KEY=VALUE, for example --set training.learning_rate=1e-4"]


def test_precision_flags_and_conflicts(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL + "training:\n  bf16: true\n")).get("training.precision") == "bf16"
    problems = problems_of(write(tmp_path, MINIMAL + "training:\n  fp16: true\n  precision: bf16\n"))
    assert problems and "contradicts training.precision" in problems[0]


def test_eval_file_and_val_size_together_are_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "  eval: eval.jsonl\n  val_size: 0.2\n")
    [problem] = problems_of(path)
    assert "data.val_size: an eval file is given" in problem
    config = load_config(write(tmp_path, MINIMAL + "  eval: eval.jsonl\n"))
    assert config.get("data.val_size") == 0 and "data.eval is given" in config.why("data.val_size")


def test_lora_options_from_the_guides_are_expressible(tmp_path: Path) -> None:
    text = MINIMAL + ("lora:\n  use_rslora: true\n  use_dora: true\n  init_lora_weights: pissa\n"
                      "  target_modules: [q_proj, v_proj]\n  loftq_config: {loftq_bits: 4}\n")
    config = load_config(write(tmp_path, text))
    assert config.section("lora")["use_rslora"] is True
    assert config.get("lora.target_modules") == ["q_proj", "v_proj"]
    assert config.get("lora.loftq_config") == {"loftq_bits": 4}


def test_saved_yaml_is_valid_yaml_with_every_value(tmp_path: Path) -> None:
    config: RunConfig = load_config(write(tmp_path, MINIMAL))
    nested = yaml.safe_load(config.to_yaml())
    assert nested == config.to_nested()


def test_problems_carry_structured_locations(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "training:\n  learnig_rate: 1e-4\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides=["lora.r=-1"])
    by_key = {p.location.key: p for p in caught.value.problems}
    assert by_key["training.learnig_rate"].location == Location(str(path), 6, key="training.learnig_rate")
    assert by_key["lora.r"].location == Location(argument="lora.r=-1", key="lora.r")
    assert by_key["lora.r"].to_json() == {"argument": "lora.r=-1", "key": "lora.r", "message": "-1 must be greater "
                                          "than 0", "level": "error"}


def test_quantization_keys_are_checked_against_the_constructor(tmp_path: Path) -> None:
    # BitsAndBytesConfig in transformers 5 is a dataclass with one field; its constructor takes the rest.
    text = (MINIMAL + "method: qlora\nquantization:\n  bnb_4bit_quant_storage: bfloat16\n"
            "  llm_int8_skip_modules: [lm_head]\n")
    config = load_config(write(tmp_path, text))
    assert config.get("quantization.bnb_4bit_quant_storage") == "bfloat16"
    assert config.get("quantization.llm_int8_skip_modules") == ["lm_head"]
    assert problems_of(write(tmp_path, MINIMAL + "method: qlora\nquantization:\n  bnb_4bit_quant_storag: x\n")) == [
        f"{tmp_path / 'config.yaml'}:7: quantization.bnb_4bit_quant_storag: unknown key; did you mean "
        "bnb_4bit_quant_storage?"]


def test_dtype_keys_from_other_tools_say_where_the_dtype_comes_from(tmp_path: Path) -> None:
    for key in ("torch_dtype", "dtype"):
        [problem] = problems_of(write(tmp_path, MINIMAL.replace("  path: some/model\n",
                                                                f"  path: some/model\n  {key}: bfloat16\n")))
        assert f"model.{key}: tuneterm sets the dtype from training.precision" in problem


def test_a_key_without_its_section_gets_the_section_it_belongs_to(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    assert problems_of(path, "lr=1e-4") == ["--set lr=1e-4: lr: needs its section: write training.learning_rate"]
    assert problems_of(path, "lora_alpha=32") == ["--set lora_alpha=32: lora_alpha: needs its section: write "
                                                  "lora.lora_alpha"]
    assert problems_of(path, "wibble=1")[0].startswith("--set wibble=1: wibble: needs its section: a key is "
                                                       "SECTION.NAME")
    assert problems_of(write(tmp_path, MINIMAL + "learning_rate: 1e-4\n")) == [
        f"{path}:5: learning_rate: needs its section: write training.learning_rate"]


def test_batch_size_misspellings_mean_the_training_micro_batch(tmp_path: Path) -> None:
    for key in ("per_device_batch_size", "batch_size", "micro_batch_size"):
        [problem] = problems_of(write(tmp_path, MINIMAL), f"training.{key}=4")
        assert "write training.per_device_train_batch_size" in problem, problem


def test_relative_paths_in_a_config_file_are_relative_to_that_file(tmp_path: Path, monkeypatch) -> None:
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "train.jsonl").write_text("{}\n")
    (project / "model").mkdir()
    config_path = project / "run.yaml"
    config_path.write_text("model:\n  path: model\ndata:\n  train: data/train.jsonl\n  eval: data/eval.jsonl\n"
                           "  val_size: 0\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(config_path, overrides=["model.chat_template=template.jinja"])
    assert config.get("data.train") == str(project / "data" / "train.jsonl")
    assert config.get("model.path") == str(project / "model")
    assert config.get("data.eval") == str(project / "data" / "eval.jsonl"), "a missing file still resolves"
    assert config.get("model.chat_template") == str(elsewhere / "template.jinja"), "--set is relative to the cwd"
    hub = load_config(write(tmp_path, "model:\n  path: Qwen/Qwen3-0.6B\ndata:\n  train: org/dataset:train\n"))
    assert hub.get("model.path") == "Qwen/Qwen3-0.6B" and hub.get("data.train") == "org/dataset:train"


def test_a_field_is_checked_on_its_own_as_a_screen_types_it() -> None:
    assert check_value("training.learning_rate", "abc") == ("abc", "expected a number, got 'abc'")
    assert check_value("lora.r", 0) == (0, "0 must be greater than 0")
    assert check_value("training.learning_rate", "1e-4") == (1e-4, None)
