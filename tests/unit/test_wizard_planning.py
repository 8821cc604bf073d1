"""The wizard's planning without a terminal: what its readings change, what it ignores, and what it tells the screen."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from tuneterm.errors import DataError, Location, Problem
from tuneterm.hardware import GpuReading, GpuSurvey, HostReading
from tuneterm.plan.catalog import ModelDescription
from tuneterm.plan.model import LinearModule, ModelFacts
from tuneterm.ui.state.draft import Draft
from tuneterm.ui.state.planning import WizardPlanning, config_file_for, launch_command

NO_GPU = GpuSurvey((), reason="no GPU in this test")
HOST = HostReading(cpu_count=2, cpu_percent=0.0, memory_total=16_000_000_000, memory_available=8_000_000_000)
GPU = GpuReading(index=0, name="NVIDIA RTX 4090", memory_total=24_000_000_000, memory_used=1_000_000_000,
                 memory_free=23_000_000_000, utilization=0, temperature=35, power_watts=30.0,
                 power_limit_watts=450.0, compute_capability=(8, 9))
MODEL = "/models/tiny-llama"
USABLE = ModelDescription(MODEL, architecture="LlamaForCausalLM", model_type="llama", has_tokenizer=True)


def tiny_llama() -> ModelFacts:
    """A two-layer Llama's parameter groups, written out (no model is loaded)."""
    hidden, inner, layers, vocab = 64, 128, 2, 400
    shapes = (("self_attn.q_proj", hidden, hidden), ("self_attn.k_proj", hidden, hidden),
              ("self_attn.v_proj", hidden, hidden), ("self_attn.o_proj", hidden, hidden),
              ("mlp.gate_proj", hidden, inner), ("mlp.up_proj", hidden, inner), ("mlp.down_proj", inner, hidden))
    linear = tuple(LinearModule(f"model.layers.{layer}.{name}", fan_in, fan_out, False)
                   for layer in range(layers) for name, fan_in, fan_out in shapes)
    embedding = vocab * hidden
    total = embedding + sum(m.in_features * m.out_features for m in linear) + (2 * layers + 1) * hidden
    return ModelFacts("LlamaForCausalLM", "llama", layers, hidden, 4, 4, 16, inner, vocab, 2048, True, total,
                      embedding, 0, linear, 0)


def chosen(data: str = "/data/train.jsonl", **sections: dict) -> Draft:
    return Draft.from_mapping({"model": {"path": MODEL}, "data": {"train": data}, **sections})


def planned(draft: Draft, gpus: GpuSurvey = NO_GPU) -> WizardPlanning:
    """Planning once the model was described and its facts read."""
    planning = WizardPlanning(gpus)
    assert planning.model_described(USABLE, draft)
    assert planning.facts_read(MODEL, tiny_llama(), None, draft)
    planning.replan(draft, lambda: HOST)
    return planning


def test_the_planning_imports_no_textual() -> None:
    code = "import sys, tuneterm.ui.state.planning\nprint('textual' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "False"


def test_an_empty_draft_says_what_to_choose_first_and_cannot_launch() -> None:
    planning, draft = WizardPlanning(NO_GPU), Draft()
    planning.replan(draft, lambda: HOST)
    assert planning.plan is None
    assert planning.waiting_for(draft) == "Choose a model to see the memory it needs."
    why = planning.why_not_ready()
    assert "choose a model" in why and "choose a dataset" in why
    assert {p.location.key for p in planning.step_problems("model")} == {"model.path"}
    assert {p.location.key for p in planning.step_problems("data")} == {"data.train"}
    assert planning.step_problems("settings") == planning.step_problems("review") == []


def test_the_plan_waits_for_the_facts_of_the_model_the_draft_names() -> None:
    readings: list[HostReading] = []

    def read_host() -> HostReading:
        readings.append(HOST)
        return HOST

    draft, planning = chosen(), WizardPlanning(NO_GPU)
    planning.reading_model(MODEL)
    planning.replan(draft, read_host)
    assert planning.plan is None and planning.waiting_for(draft) == f"Reading {MODEL}..."
    assert planning.why_not_ready() == "wait until the model and the data are read"
    assert readings == [], "the host is read only to make a plan"
    assert planning.resolved is planning.config is not None

    assert not planning.facts_read("/models/another", tiny_llama(), None, draft), "a model no longer chosen"
    assert planning.facts is None

    assert planning.facts_read(MODEL, tiny_llama(), None, draft)
    planning.replan(draft, read_host)
    assert planning.plan is not None and planning.waiting_for(draft) == "" and readings == [HOST]
    assert planning.trainable == (planning.plan.trainable_params, planning.plan.total_params)
    assert 0 < planning.plan.trainable_params < planning.plan.total_params
    assert planning.resolved is planning.plan.config and planning.advice == planning.plan.advice
    assert planning.plan.schedule is None, "no data read yet"
    assert planning.why_not_ready() == ""


def test_what_the_model_step_says_while_the_model_is_read() -> None:
    draft, planning = chosen(), WizardPlanning(NO_GPU)
    needs_code = replace(USABLE, needs_remote_code=True)
    assert not planning.model_described(replace(USABLE, path="/models/another"), draft)
    assert planning.description is None
    assert planning.model_described(needs_code, draft)
    assert planning.model_working.startswith("Allow its code")
    draft.set("model.trust_remote_code", True)
    assert planning.model_described(needs_code, draft) and planning.model_working == "Counting parameters..."
    assert planning.model_described(replace(USABLE, architecture=None), draft) and planning.model_working == ""

    assert planning.facts_read(MODEL, None, DataError("no config.json"), draft)
    planning.replan(draft, lambda: HOST)
    assert planning.plan is None and planning.waiting_for(draft) == "✗ no config.json"


def test_choosing_another_model_forgets_what_was_read_of_the_last(tmp_path: Path, monkeypatch) -> None:
    draft = chosen()
    planning = planned(draft)
    assert not planning.model_chosen(draft, MODEL), "the same model again changes nothing"
    assert planning.facts is not None and planning.description is not None

    planning.remote_code_allowed(draft, True)
    assert draft.get("model.trust_remote_code") is True
    assert planning.facts is None and planning.description is USABLE, "what the model is still holds"
    planning.remote_code_allowed(draft, False)
    assert "model.trust_remote_code" not in draft.values

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-model").mkdir()
    assert planning.model_chosen(draft, "my-model")
    assert draft.get("model.path") == str(tmp_path / "my-model"), "a path that exists is made absolute"
    assert planning.description is None and planning.facts is None
    assert planning.model_chosen(draft, "org/hub-model") and draft.get("model.path") == "org/hub-model"


def test_the_data_is_read_once_per_settings_and_a_stale_result_is_ignored(tmp_path: Path) -> None:
    train, evaluation = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text("{}\n")
    evaluation.write_text("{}\n")
    draft, planning = chosen(str(train)), WizardPlanning(NO_GPU)
    assert planning.start_data_read(draft, print) is None, "not before the model is known to be usable"
    planning.model_described(USABLE, draft)
    first = planning.start_data_read(draft, print)
    assert first is not None and planning.reading_data_now and planning.summary_key == first.key
    assert first.config.get("data.train") == str(train)
    assert planning.start_data_read(draft, print) is None, "the same settings are not read twice"

    draft.set("data.val_size", 0.2)
    assert planning.data_setting_changed(draft, "data.eval", str(evaluation))
    assert "data.val_size" not in draft.values, "an eval file replaces the held-out share"
    assert not planning.data_setting_changed(draft, "data.eval", str(evaluation)), "no change"
    second = planning.start_data_read(draft, print)
    assert second is not None and second.key != first.key
    assert first.work.cancelled and not second.work.cancelled, "the read of the old settings is stopped"

    assert not planning.data_failed(first.key, DataError("broken")), "about settings no longer awaited"
    assert planning.data_error is None and planning.reading_data_now
    assert planning.data_failed(second.key, DataError("3 records are not valid"))
    assert not planning.reading_data_now
    planning.facts_read(MODEL, tiny_llama(), None, draft)
    planning.replan(draft, lambda: HOST)
    assert [str(p) for p in planning.step_problems("data")] == ["data.train: 3 records are not valid"]
    assert "3 records are not valid" in planning.why_not_ready()

    planning.data_cancelled()
    third = planning.start_data_read(draft, print)
    assert third is not None and third.key == second.key, "after a cancel the same settings are read again"
    assert planning.data_error is None
    planning.cancel_data()
    assert third.work.cancelled and not planning.reading_data_now


def test_the_data_summary_gives_the_schedule_the_report_and_the_suggested_max_length(
        tiny_model: Path, chat_data: dict) -> None:
    from tuneterm.plan.catalog import describe_model
    from tuneterm.plan.planner import data_summary, model_facts

    draft = Draft.from_mapping({"model": {"path": str(tiny_model)}, "data": {"train": str(chat_data["train"])}})
    planning = WizardPlanning(NO_GPU)
    assert planning.model_described(describe_model(str(tiny_model)), draft)
    request = planning.start_data_read(draft, print)
    assert request is not None
    assert planning.facts_read(str(tiny_model), model_facts(request.config), None, draft)
    planning.replan(draft, lambda: HOST)
    assert planning.plan is not None and planning.plan.schedule is None and planning.data_report() is None

    summary = data_summary(request.config, request.work)
    assert planning.data_read(request.key, summary) and not planning.reading_data_now
    planning.replan(draft, lambda: HOST)
    plan = planning.plan
    assert plan is not None and plan.schedule is not None and plan.schedule.train_examples == 144
    report = planning.data_report()
    assert report is not None and report.summary is summary and report.view is plan.data

    assert plan.data is not None and plan.data.max_length == plan.data.suggested_max_length
    assert planning.max_length_suggestion() is None, "the planned max length is the suggested one"
    suggested = plan.data.suggested_max_length
    draft.set("training.max_length", suggested // 2)
    planning.replan(draft, lambda: HOST)
    assert planning.max_length_suggestion() == {"training.max_length": suggested}

    draft.set("data.format", "alpaca")
    assert planning.start_data_read(draft, print) is not None
    assert not planning.data_read(request.key, summary), "a summary of settings no longer awaited"
    assert planning.summary is None


def test_the_gpus_plan_again_only_when_their_free_memory_changes() -> None:
    one = GpuSurvey((GPU,), driver="580.1")
    planning = WizardPlanning(one)
    assert not planning.gpus_read(GpuSurvey((replace(GPU, utilization=90),), driver="580.1"))
    assert planning.gpus is one
    busier = GpuSurvey((replace(GPU, memory_free=1_000_000_000),), driver="580.1")
    assert planning.gpus_read(busier) and planning.gpus is busier


def test_choosing_gpus_picks_how_they_share_the_work() -> None:
    draft, planning = chosen(), WizardPlanning(NO_GPU)
    planning.gpus_chosen(draft, (1,), "fsdp")
    assert (draft.gpus, draft.strategy) == ((1,), "single")
    planning.gpus_chosen(draft, (0, 1), "fsdp")
    assert (draft.gpus, draft.strategy) == ((0, 1), "ddp"), "a second GPU just added starts with DDP"
    planning.gpus_chosen(draft, (0, 1), "fsdp")
    assert draft.strategy == "fsdp"
    assert "CUDA_VISIBLE_DEVICES=0,1" in launch_command(draft) and "RUN_DIR" in launch_command(draft)
    planning.gpus_chosen(draft, (), "fsdp")
    assert draft.strategy == "single" and launch_command(draft) == "", "no launch of its own"


def test_two_gpus_plan_the_memory_per_gpu() -> None:
    two = GpuSurvey((GPU, replace(GPU, index=1)), driver="580.1")
    draft = chosen()
    single = planned(draft, two).plan
    draft.gpus, draft.strategy = (0, 1), "fsdp"
    shared = planned(draft, two).plan
    assert single is not None and shared is not None
    assert shared.memory_setup.world_size == 2 and shared.memory.total_bytes < single.memory.total_bytes


def test_saving_writes_the_config_only_when_it_is_valid(tmp_path: Path) -> None:
    draft = chosen(training={"learning_rate": 2e-4})
    planning = planned(draft)
    target = tmp_path / "configs" / "run.yaml"
    assert planning.save(draft, target) == ""
    assert "learning_rate: 0.0002" in target.read_text() and draft.source == target and not draft.dirty
    assert config_file_for(draft, tmp_path) == target, "saving again suggests the same file"

    (tmp_path / "a-file").write_text("")
    assert planning.save(draft, tmp_path / "a-file" / "run.yaml").startswith("Cannot write")

    draft.set("training.learning_rate", "fast")
    planning.replan(draft, lambda: HOST)
    assert planning.config is None
    assert planning.save(draft, tmp_path / "invalid.yaml").startswith("Fix the config problems first")
    assert not (tmp_path / "invalid.yaml").exists()


def test_the_suggested_config_file_is_named_after_the_model(tmp_path: Path) -> None:
    assert config_file_for(Draft({"model.path": "Qwen/Qwen3-0.6B"}), tmp_path) == tmp_path / "Qwen3-0.6B.yaml"
    assert config_file_for(Draft({"model.path": "/models/my model/"}), tmp_path) == tmp_path / "my-model.yaml"
    assert config_file_for(Draft(), tmp_path) == tmp_path / "run.yaml"


def test_an_output_directory_problem_marks_no_step() -> None:
    planning = WizardPlanning(NO_GPU)
    planning.problems = [Problem("in use", Location(key="training.output_dir")),
                         Problem("far too high", Location(key="training.learning_rate")),
                         Problem("worth knowing", Location(key="training.warmup_steps"), "warning")]
    assert [p.message for p in planning.step_problems("settings")] == ["far too high"]


def test_data_whose_columns_do_not_tell_its_format_gets_the_likely_mapping_and_the_mapper(tmp_path: Path) -> None:
    from tuneterm.data.formats import FormatUnknown

    train = tmp_path / "qa.csv"
    train.write_text("question,answer\n")
    draft, planning = chosen(str(train)), WizardPlanning(NO_GPU)
    planning.model_described(USABLE, draft)
    request = planning.start_data_read(draft, print)
    assert request is not None and planning.column_mapper(draft) is None
    assert planning.data_failed(request.key, FormatUnknown("cannot tell", {"question": 9, "answer": 9}, 9))

    assert planning.guess_columns(draft)
    assert draft.get("data.format") == "alpaca"
    assert draft.get("data.columns") == {"instruction": "question", "output": "answer"}
    mapper = planning.column_mapper(draft)
    assert mapper is not None and mapper.guessed and mapper.format == "alpaca"
    assert mapper.chosen == {"instruction": "question", "input": None, "output": "answer", "system": None,
                             "history": None}, "every field of the format, in its order"
    assert mapper.config == "data.format: alpaca, data.columns: {instruction: question, output: answer}"
    assert mapper.command == (f"tuneterm inspect {train} --model {MODEL} --format alpaca "
                              "--columns '{instruction: question, output: answer}'")
    assert not planning.guess_columns(draft), "guessed once; a read with the mapping may fail for other reasons"

    assert planning.data_setting_changed(draft, "data.format", "prompt_completion")
    assert draft.get("data.columns") == {"prompt": "question", "completion": "answer"}, "the other format's fields"
    mapper = planning.column_mapper(draft)
    assert mapper is not None and not mapper.guessed and list(mapper.chosen) == ["prompt", "completion"]

    planning.data_setting_changed(draft, "data.columns", {"prompt": "answer", "completion": "question"})
    assert draft.get("data.columns") == {"prompt": "answer", "completion": "question"}, "the person's mapping"
    planning.data_setting_changed(draft, "data.format", None)
    planning.data_setting_changed(draft, "data.columns", {"instruction": "answer", "output": "question"})
    assert draft.get("data.format") == "alpaca", "a mapping of one format's fields says that format"
    assert planning.data_setting_changed(draft, "data.train", str(tmp_path / "other.jsonl"))
    assert planning.column_mapper(draft) is None, "the mapper belongs to the data it was made for"


def test_a_mapping_the_person_chose_is_never_replaced_by_a_guess() -> None:
    from tuneterm.data.formats import FormatUnknown

    draft = Draft.from_mapping({"model": {"path": MODEL}, "data": {"train": "/data/qa.csv",
                                                                   "columns": {"text": "answer"}}})
    planning = WizardPlanning(NO_GPU)
    planning.columns_found = FormatUnknown("cannot tell", {"question": 9, "answer": 9}, 9).columns
    assert not planning.guess_columns(draft)
    assert draft.get("data.columns") == {"text": "answer"}
    mapper = planning.column_mapper(draft)
    assert mapper is not None and mapper.format == "text" and not mapper.guessed, "the format of the fields mapped"
    assert mapper.chosen == {"text": "answer"}


def test_memory_is_planned_at_most_at_the_models_context_length_and_says_why() -> None:
    from tuneterm.plan.planner import plan_run

    short = replace(tiny_llama(), context_length=512)
    auto = plan_run(chosen().config(), short, None, NO_GPU, host=HOST)
    assert auto.memory_setup.seq_len == 512, "not 1024 for a 512-token model"
    assert auto.length_why == "the model's context length: max length is auto and no data is read"
    assert "memory is estimated at 512 tokens" in " ".join(p.message for p in auto.problems)
    longer = plan_run(chosen(training={"max_length": 1024}).config(), short, None, NO_GPU, host=HOST)
    assert longer.memory_setup.seq_len == 512
    assert longer.length_why == "the model's context length; the max length is 1024"
    advice = next(a for a in longer.advice if a.field == "training.max_length")
    assert advice.level == "warning" and advice.fix == {"training.max_length": 512}
    assert advice.message == "max_length 1024 is above the model's context length (512 tokens)"
    within = plan_run(chosen(training={"max_length": 256}).config(), short, None, NO_GPU, host=HOST)
    assert (within.memory_setup.seq_len, within.length_why) == (256, "the max length")
