"""The wizard driven with the keyboard, as a person would (paths and values pasted into their fields, as a terminal
delivers a paste): on the offline tiny model and data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from textual import events
from textual.app import App
from textual.command import CommandList
from textual.widgets import DataTable, Input, Select

from tests.ui.conftest import make_services, screen_of, wait_for_plan, wait_until
from tuneterm.config import load_config
from tuneterm.ui.app import Opening, make_app
from tuneterm.ui.screens.wizard import WizardScreen
from tuneterm.ui.state.draft import Draft
from tuneterm.ui.widgets.fields import SettingField
from tuneterm.ui.widgets.plan_panel import PlanPanel


async def type_into(pilot, selector: str, text: str, submit: bool = True) -> None:
    """Replace what the field says with `text`, pasted in one change (Pilot spends 50 ms or more on each key
    pressed), then press enter unless `submit` is False."""
    widget = pilot.app.screen.query_one(selector)
    widget.focus()
    widget.value = ""
    widget.post_message(events.Paste(text))
    await pilot.pause()
    if submit:
        await pilot.press("enter")
    await pilot.pause()


async def choose_model_and_data(pilot, model: Path, data: Path) -> WizardScreen:
    wizard = pilot.app.screen
    assert isinstance(wizard, WizardScreen)
    await type_into(pilot, "#model-path", str(model))
    await wait_until(pilot, lambda: wizard.planning.facts is not None, what="the model's facts")
    await pilot.press("ctrl+n")
    await type_into(pilot, "#data-path", str(data))
    await wait_until(pilot, lambda: wizard.planning.summary is not None, what="the data summary")
    return wizard


async def test_walk_the_wizard_back_and_forth_take_advice_and_get_the_config(services, tiny_model: Path,
                                                                             chat_data: dict, tmp_path: Path) -> None:
    app = make_app(services, Opening("wizard", Draft()))
    async with app.run_test(size=(100, 30)) as pilot:
        wizard = await choose_model_and_data(pilot, tiny_model, chat_data["train"])
        assert wizard.step == "data"
        plan = wizard.planning.plan
        assert plan is not None and plan.schedule is not None, "the data gives the schedule"
        assert plan.schedule.train_examples == 144  # 160 examples, 10% held out

        await pilot.press("ctrl+n")
        assert wizard.step == "settings"
        await type_into(pilot, "#field-training-learning_rate #control", "1e-3", submit=False)
        assert wizard.draft.get("training.learning_rate") == 1e-3
        field = wizard.query_one("#field-training-learning_rate", SettingField)
        assert field.advice is not None and field.advice.message == "0.001: the guides' 2e-4 does not apply to this " \
                                                                   "model", "a tiny model is not a pretrained LLM"
        assert wizard.suggestion() is None, "nothing to take"
        await type_into(pilot, "#field-lora-lora_dropout #control", "0.3", submit=False)
        field = wizard.query_one("#field-lora-lora_dropout", SettingField)
        assert field.advice is not None and field.advice.fix == {"lora.lora_dropout": 0.0}
        await pilot.press("ctrl+t")  # take the suggestion of the focused field
        assert wizard.draft.get("lora.lora_dropout") == 0.0
        assert field.query_one("#control", Input).value == "0.0", "the field the cursor is in shows what was taken"
        await type_into(pilot, "#field-training-per_device_train_batch_size #control", "4", submit=False)

        # Back twice and forward again: nothing entered is lost.
        await pilot.press("escape", "escape")
        assert wizard.step == "model"
        await pilot.press("ctrl+n", "ctrl+n", "ctrl+n")
        assert wizard.step == "review"
        assert wizard.draft.values == {"model.path": str(tiny_model), "data.train": str(chat_data["train"]),
                                       "training.learning_rate": 1e-3, "lora.lora_dropout": 0.0,
                                       "training.per_device_train_batch_size": 4}
        assert wizard.planning.config is not None and not [p for p in wizard.planning.problems if p.level == "error"]
        plan = wizard.planning.plan
        assert plan is not None and plan.config.get("training.max_length") % 64 == 0, "derived from the data"

        # Save, and the file is the config: it loads to the same values.
        target = tmp_path / "saved.yaml"
        await pilot.press("ctrl+s")
        await type_into(pilot, "#path", str(target))
        assert target.is_file()
        saved = load_config(target)
        assert saved.get("training.learning_rate") == 1e-3 and saved.get("training.per_device_train_batch_size") == 4
        assert saved.get("data.train") == str(chat_data["train"])
        assert not wizard.draft.dirty and f"tuneterm train {target}" in wizard.draft.command_line()


async def test_a_saved_file_is_never_replaced_without_asking(services, tiny_model: Path, chat_data: dict,
                                                           tmp_path: Path) -> None:
    target = tmp_path / "exists.yaml"
    target.write_text("precious: true\n")
    draft = Draft.from_mapping({"model": {"path": str(tiny_model)}, "data": {"train": str(chat_data["train"])}})
    app = make_app(services, Opening("wizard", draft, "review"))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+s")
        await type_into(pilot, "#path", str(target))
        await pilot.press("enter")  # the question's default answer is Cancel
        await pilot.pause()
        assert yaml.safe_load(target.read_text()) == {"precious": True}


async def test_launch_names_what_is_missing(services) -> None:
    app = make_app(services, Opening("wizard", Draft()))
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        await pilot.press("ctrl+r")
        await pilot.pause()
        messages = [n.message for n in app._notifications]
        assert any("choose a model" in m and "choose a dataset" in m for m in messages), messages


async def test_leaving_with_unsaved_settings_asks_first(services, tiny_model: Path) -> None:
    app = make_app(services, Opening("wizard", Draft()))
    async with app.run_test(size=(100, 30)) as pilot:
        await type_into(pilot, "#model-path", str(tiny_model))
        await pilot.press("escape")  # from the first step: leave the wizard
        await pilot.pause()
        assert type(app.screen).__name__ == "Confirm"
        await pilot.press("escape")  # no
        await pilot.pause()
        assert isinstance(app.screen, WizardScreen) and app.screen.draft.get("model.path") == str(tiny_model)
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert type(app.screen).__name__ == "Confirm", "quitting asks too"
        assert app.focused is not None and app.focused.id == "no", "the safe answer first"
        await pilot.press("left")
        assert app.focused is not None and app.focused.id == "yes", "the arrows move between the answers"
        await pilot.press("right")
        assert app.focused is not None and app.focused.id == "no"


async def test_a_model_path_typed_without_enter_is_applied_when_the_field_is_left(services, tiny_model: Path) -> None:
    app = make_app(services, Opening("wizard", Draft()))
    async with app.run_test(size=(100, 30)) as pilot:
        wizard = screen_of(app, WizardScreen)
        await type_into(pilot, "#model-path", str(tiny_model))
        await wait_until(pilot, lambda: wizard.planning.facts is not None)
        await type_into(pilot, "#model-path", "?", submit=False)  # the field now says "?"
        await pilot.press("ctrl+n")
        await wait_until(pilot, lambda: wizard.draft.get("model.path") == "?", what="the typed path applied")
        details = wizard.query_one("#model-details")
        await wait_until(pilot, lambda: "✗" in str(details.render()), what="what is wrong with it, shown")


async def model_then_data(pilot, model: Path, data: Path):
    """From an empty wizard: type the model, go to the data step, type the data path; the wizard screen."""
    wizard = pilot.app.screen
    await type_into(pilot, "#model-path", str(model))
    await wait_until(pilot, lambda: wizard.planning.facts is not None)
    await pilot.press("ctrl+n")
    await type_into(pilot, "#data-path", str(data))
    return wizard


async def test_a_broken_dataset_shows_its_lines_and_can_leave_them_out(services, tiny_model: Path,
                                                                      tmp_path: Path) -> None:
    from tests.helpers import write_jsonl

    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus 1?"},
                          {"role": "assistant", "content": f"{i + 1}."}]} for i in range(30)]
    rows[1]["messages"][1]["role"] = "robot"
    broken = write_jsonl(tmp_path / "broken.jsonl", rows)
    app = make_app(services, Opening("wizard", Draft()))
    async with app.run_test(size=(100, 30)) as pilot:
        wizard = await model_then_data(pilot, tiny_model, broken)
        await wait_until(pilot, lambda: wizard.planning.summary is not None or wizard.planning.data_error is not None)
        report = str(wizard.query_one("#data-report").render())
        assert f"{broken}:2: messages[1]: unknown role 'robot'" in report
        assert any(p.level == "error" and p.location.key == "data.train" for p in wizard.planning.problems)
        wizard.query_one("#leave-out-invalid").value = True  # leave it out: the record is named, not fatal
        await wait_until(pilot, lambda: wizard.draft.get("data.strict") is False
                         and not wizard.planning.step_problems("data"), what="the invalid record left out")
        assert any(p.level == "warning" and "left out (data.strict: false)" in p.message
                   for p in wizard.planning.problems)


def sums_csv(path: Path, header: str) -> Path:
    """A CSV of 30 questions and answers under the column names in `header`."""
    path.write_text(f"{header}\n" + "".join(f"What is {i} plus 1?,{i + 1}.\n" for i in range(30)))
    return path


async def test_a_csv_with_its_own_column_names_is_mapped_for_the_person_who_can_change_it(
        services, tiny_model: Path, tmp_path: Path) -> None:
    from textual.widgets import Label, Select

    data = sums_csv(tmp_path / "qa.csv", "question,answer")
    app = make_app(services, Opening("wizard", Draft()))
    async with app.run_test(size=(100, 30)) as pilot:
        wizard = await model_then_data(pilot, tiny_model, data)
        await wait_until(pilot, lambda: wizard.planning.summary is not None, what="the data read with the mapping")
        assert wizard.planning.summary.train.detection.format == "alpaca"
        assert wizard.draft.get("data.format") == "alpaca"
        assert wizard.draft.get("data.columns") == {"instruction": "question", "output": "answer"}
        mapper = wizard.query_one("#column-mapper")
        assert mapper.display, "the mapping stays in view, to change"
        rows = {str(row.query_one(Label).render()): row.query_one(Select).value
                for row in mapper.query(".mapper-row") if row.display}
        assert rows == {"instruction": "question", "input (optional)": "(not in the data)",
                        "output": "answer", "system (optional)": "(not in the data)",
                        "history (optional)": "(not in the data)"}, "each field named, the likely columns chosen"
        result = str(wizard.query_one("#mapper-result").render())
        assert "data.format: alpaca, data.columns: {instruction: question, output: answer}" in result
        assert (f"tuneterm inspect {data} --model {tiny_model} --format alpaca --columns '{{instruction: question, "
                "output: answer}'") in result.replace("\n", " ")

        wizard.query_one("#format", Select).value = "prompt_completion"  # the person reads it another way
        await wait_until(pilot, lambda: wizard.planning.summary is not None
                         and wizard.planning.summary.train.detection.format == "prompt_completion",
                         what="the data read as prompt_completion")
        assert wizard.draft.get("data.columns") == {"prompt": "question", "completion": "answer"}
        assert [row.id for row in mapper.query(".mapper-row") if row.display] == ["map-row-prompt",
                                                                                 "map-row-completion"]
        wizard.query_one("#map-completion", Select).value = "question"
        await wait_until(pilot, lambda: wizard.draft.get("data.columns") == {"prompt": "question",
                                                                            "completion": "question"})


async def test_columns_whose_names_say_nothing_are_mapped_by_the_person(services, tiny_model: Path,
                                                                        tmp_path: Path) -> None:
    from textual.widgets import Select

    data = sums_csv(tmp_path / "pairs.csv", "left,right")
    app = make_app(services, Opening("wizard", Draft()))
    async with app.run_test(size=(80, 24)) as pilot:
        wizard = await model_then_data(pilot, tiny_model, data)
        await wait_until(pilot, lambda: wizard.planning.data_error is not None, what="the format not told")
        report = str(wizard.query_one("#data-report").render())
        assert report == ("✗ The column names (left, right) do not tell the data format: choose the format above and "
                          "which column holds what below."), "what to do, in short: the mapper is below"
        assert wizard.query_one("#column-mapper").display and wizard.draft.get("data.columns") is None
        wizard.query_one("#map-instruction", Select).value = "left"
        wizard.query_one("#map-output", Select).value = "right"
        await wait_until(pilot, lambda: wizard.planning.summary is not None, what="the data read with the mapping")
        assert wizard.draft.get("data.columns") == {"instruction": "left", "output": "right"}
        assert wizard.draft.get("data.format") == "alpaca", "the format the mapping says, set"
        assert wizard.planning.summary.train.examples == 30


async def test_a_config_file_opens_at_the_review_step(services, tiny_model: Path, chat_data: dict,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneterm import cli
    from tuneterm.ui import app as app_module

    path = tmp_path / "run.yaml"
    path.write_text(f"model:\n  path: {tiny_model}\ndata:\n  train: {chat_data['train']}\ntraining:\n"
                    "  learning_rate: 1e-4\n")
    opened: list = []
    monkeypatch.setattr(app_module.TuneTermApp, "run", lambda self: opened.append(self.opening))
    monkeypatch.setattr("tuneterm.cli.app.has_terminal", lambda: True)
    assert cli.main([str(path)]) == 0
    [opening] = opened
    assert opening.screen == "wizard" and opening.step == "review"
    assert opening.draft.values["training.learning_rate"] == 1e-4 and opening.draft.source == path
    app = make_app(services, opening)
    async with app.run_test(size=(100, 30)) as pilot:
        wizard = await wait_for_plan(pilot)
        assert wizard.step == "review" and not wizard.draft.dirty
        assert wizard.draft.command_line() == f"tuneterm train {path}"
        assert "Ready to launch" in str(wizard.query_one("#review-status").render())


def _first_command(app: App[None]) -> str | None:
    """The best match the command palette shows for what was typed in it, None before it shows one."""
    if not app.screen.query(CommandList):
        return None
    matches = app.screen.query_one(CommandList)
    return str(matches.get_option_at_index(0).prompt).splitlines()[0] if matches.option_count else None


async def test_the_command_palette_runs_the_wizard_actions(services) -> None:
    app = make_app(services, Opening("wizard", Draft()))
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"launch the run")
        await wait_until(pilot, lambda: _first_command(app) == "Launch the run", what="the palette's search")
        await pilot.press("enter")
        await wait_until(pilot, lambda: any("Not ready" in n.message for n in app._notifications),
                         what="the launch action run from the palette")


async def test_the_command_palette_goes_back_to_the_run_list_asking_first_for_unsaved_settings(
        tmp_path: Path) -> None:
    from tests.helpers import two_recorded_runs
    from tuneterm.ui.screens.start import StartScreen

    two_recorded_runs(tmp_path / "runs")
    app = make_app(make_services(tmp_path / "runs"), Opening("wizard", Draft()))
    async with app.run_test(size=(100, 30)) as pilot:
        wizard = screen_of(app, WizardScreen)
        wizard.draft.set("training.seed", 7)  # work that is in no file

        async def run_list_from_the_palette() -> None:
            await pilot.press("ctrl+p")
            await pilot.pause()
            await pilot.press(*"run list")
            await wait_until(pilot, lambda: _first_command(app) == "Run list", what="the palette's search")
            await pilot.press("enter")
            await wait_until(pilot, lambda: type(app.screen).__name__ == "Confirm", what="the question first")

        await run_list_from_the_palette()
        await pilot.press("escape")  # no: the wizard stays, with what was set
        await wait_until(pilot, lambda: app.screen is wizard and wizard.draft.get("training.seed") == 7)
        await run_list_from_the_palette()
        await pilot.press("left", "enter")  # yes
        await wait_until(pilot, lambda: isinstance(app.screen, StartScreen) and app.focused is not None
                         and app.focused.id == "runs", what="the start screen, the cursor on the run list")
        assert wizard not in app.screen_stack and app.screen.query_one("#runs", DataTable).row_count == 2


async def test_two_gpus_and_fsdp_plan_memory_per_gpu_and_show_the_launch_command(tiny_model: Path, chat_data: dict,
                                                                                 tmp_path: Path) -> None:
    from dataclasses import replace

    from textual.widgets import Select, SelectionList

    from tests.ui.conftest import FAKE_GPU
    from tuneterm.hardware import GpuSurvey

    two = GpuSurvey((FAKE_GPU.gpus[0], replace(FAKE_GPU.gpus[0], index=1)), FAKE_GPU.driver)
    app = make_app(make_services(tmp_path / "runs", read_gpus=lambda: two), Opening("wizard", Draft()))
    async with app.run_test(size=(100, 30)) as pilot:
        wizard = await model_then_data(pilot, tiny_model, chat_data["train"])
        await wait_for_plan(pilot)
        single = wizard.planning.plan.memory.total_bytes
        wizard.show_step("settings")
        await pilot.pause()
        assert wizard.query_one("#gpu-choice").display
        gpus = wizard.query_one("#gpus", SelectionList)
        gpus.select_all()
        await wait_until(pilot, lambda: wizard.draft.gpus == (0, 1) and wizard.draft.strategy == "ddp")
        wizard.query_one("#strategy", Select).value = "fsdp"
        await wait_until(pilot, lambda: wizard.draft.strategy == "fsdp" and wizard.planning.plan is not None)
        assert wizard.planning.plan.memory_setup.world_size == 2
        assert wizard.planning.plan.memory.total_bytes < single  # weights, gradients and optimizer state sharded
        assert "per GPU" in str(wizard.query_one("#plan-memory").render())
        review = wizard.query_one("#review-command")
        text = str(review.render())
        assert "--gpus 0,1 --strategy fsdp --detach" in text
        assert "CUDA_VISIBLE_DEVICES=0,1" in text and "launch --config_file RUN_DIR/accelerate.yaml" in text


async def test_the_demo_says_it_is_building_until_the_wizard_opens_and_builds_once(tiny_model: Path, chat_data: dict,
                                                                                  tmp_path: Path) -> None:
    import threading

    demo = tmp_path / "demo"
    (demo / "data").mkdir(parents=True)
    (demo / "model").symlink_to(tiny_model)
    (demo / "data" / "train.jsonl").symlink_to(chat_data["train"])
    (demo / "data" / "eval.jsonl").symlink_to(chat_data["eval"])
    release, builds = threading.Event(), []

    def build(tools: bool) -> Path:  # the first build, held until the test has looked
        builds.append(1)
        release.wait(60)
        return demo

    app = make_app(make_services(tmp_path / "runs", demo_dir=build), Opening(demo=True))
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        await wait_until(pilot, lambda: builds, what="the build started")
        await wait_until(pilot, lambda: any("Building the demo" in n.message for n in app._notifications),
                         what="the building said")
        await pilot.press("d")  # again, impatient
        await wait_until(pilot, lambda: any("Still building the demo" in n.message for n in app._notifications),
                         what="the still building said")
        release.set()
        await wait_until(pilot, lambda: isinstance(app.screen, WizardScreen), what="the wizard")
        wizard = screen_of(app, WizardScreen)
        assert wizard.draft.get("model.path") == str(demo / "model") and builds == [1]
        assert not any("Building the demo" in n.message for n in app._notifications), "said only while building"
        await wait_until(pilot, lambda: wizard.planning.facts is not None, what="the demo model read")


async def test_a_value_that_stops_the_launch_says_why_at_its_field_and_steps_keep_their_marks(
        services, tiny_model: Path, chat_data: dict) -> None:
    draft = Draft.from_mapping({"model": {"path": str(tiny_model)}, "data": {"train": str(chat_data["train"])},
                                "training": {"max_length": 8}})
    app = make_app(services, Opening("wizard", draft))
    async with app.run_test(size=(100, 30)) as pilot:
        wizard = await wait_for_plan(pilot)

        def rail() -> str:
            return str(wizard.query_one("#step-rail").render())

        await pilot.press("ctrl+n", "ctrl+n", "ctrl+n")
        assert wizard.step == "review"
        assert "1 Model ✓" in rail() and "2 Data ✓" in rail() and "3 Settings ✗" in rail()
        panel = wizard.query_one(PlanPanel)
        panel.scroll_end(animate=False)
        await wait_until(pilot, lambda: panel.scroll_y > 0, what="the plan panel scrolled down")
        await pilot.press("escape")
        assert wizard.step == "settings"
        await pilot.pause()
        assert panel.scroll_y == 0, "each step shows the plan from its top"
        field = wizard.query_one("#field-training-max_length")
        said = str(field.query_one(".setting-advice").render())
        assert "✗ " in said and "lose their whole response at max_length 8: raise it" in said, said
        top = str(wizard.query_one("#settings-problems").render())
        assert top == "✗ Stops the launch: max length (said at the field)"

        await type_into(pilot, "#field-training-max_length #control", "256", submit=False)
        assert not wizard.query_one("#settings-problems").display
        await pilot.press("escape", "escape")
        assert wizard.step == "model"
        assert "2 Data ✓" in rail() and "3 Settings ✓" in rail(), "going back keeps what was gone through"
        assert "4 Review ✓" not in rail()


@pytest.mark.parametrize("size", [(80, 24), (100, 30)])
async def test_path_fields_show_the_end_of_a_path_whole(tiny_model: Path, chat_data: dict, tmp_path: Path,
                                                       size: tuple[int, int]) -> None:
    from tuneterm.ui.widgets.paths import PathInput

    folder = tmp_path / "a-folder-with-a-name-long-enough-to-need-cutting-at-these-widths"
    folder.mkdir()
    (folder / "train.jsonl").write_text(chat_data["train"].read_text())
    (folder / "eval.jsonl").write_text(chat_data["eval"].read_text())
    draft = Draft.from_mapping({"model": {"path": str(tiny_model)}, "data": {"train": str(folder / "train.jsonl"),
                                                                              "eval": str(folder / "eval.jsonl")}})
    app = make_app(make_services(tmp_path / "runs"), Opening("wizard", draft, "data"))
    async with app.run_test(size=size) as pilot:
        wizard = await wait_for_plan(pilot)
        await pilot.pause()

        def shown(selector: str) -> str:
            field = wizard.query_one(selector, PathInput)
            row = next(line for line in (field.render_line(y).text for y in range(field.size.height)) if "/" in line)
            return row.strip(" ▊▎")

        for selector, name in (("#data-path", "train.jsonl"), ("#eval-path", "eval.jsonl")):
            assert shown(selector).endswith(f"-widths/{name}"), (selector, shown(selector))
        await pilot.press("tab")  # the cursor leaves the path it was in: its end stays in view
        await pilot.pause()
        assert shown("#data-path").endswith("/train.jsonl"), shown("#data-path")


async def test_tool_calls_and_reasoning_are_counted_marked_and_the_reasoning_choice_rerenders(
        services, tiny_model: Path, tmp_path: Path) -> None:
    import random

    from tests.helpers import write_jsonl
    from tuneterm.demo import TOOLS_TEMPLATE, tool_conversations
    from tuneterm.ui.widgets.data_step import PreviewPane

    rows = tool_conversations(random.Random(3407))
    kinds = ("plus", "capital of", "opposite of", "backwards")  # a record of each kind the tools demo has
    data = write_jsonl(tmp_path / "tools.jsonl", [next(row for row in rows if kind in row["messages"][0]["content"])
                                                  for kind in kinds])
    draft = Draft.from_config(load_config(base={"model": {"path": str(tiny_model),
                                                          "chat_template": str(TOOLS_TEMPLATE)}}))
    app = make_app(services, Opening("wizard", draft))
    async with app.run_test(size=(100, 30)) as pilot:
        wizard = await choose_model_and_data(pilot, tiny_model, data)
        report = str(wizard.query_one("#data-report").render())
        assert "tool calls in 2 examples" in report and "trained tokens are reasoning" in report
        assert "thinking mode (reasoning trained) for 2 examples, no-think (the empty think block is prompt) for 2" \
            in report
        assert wizard.query_one("#reasoning-row").display
        preview = wizard.query_one(PreviewPane)
        preview.focus()
        shown = []
        for _ in range(len(preview.previews)):
            shown.append(preview.render())
            await pilot.press("right")
        tool_example = next(text for text in shown if "tool call" in text.split("\n")[0])
        a, b = (json.loads(data.read_text().splitlines()[0])["messages"][1]["tool_calls"][0]["function"]["arguments"][k]
                for k in "ab")
        call = f'<tool_call>\n{{"name": "add", "arguments": {{"a": {a}, "b": {b}}}}}\n</tool_call>'
        assert f"[b $primary]{call}[/]" in tool_example
        assert f'[dim i $warning]{{"sum": {a + b}}}[/]' in tool_example  # the tool's result: shown, never trained
        assert f"[b $accent]Adding {a} and {b}: the add tool.[/]" in tool_example

        wizard.query_one("#reasoning", Select).value = "drop"
        await wait_until(pilot, lambda: wizard.draft.get("data.reasoning") == "drop"
                         and "thinking mode (reasoning trained) for 0 examples" in str(
                             wizard.query_one("#data-report").render()), what="the no-think rendering")
        for _ in range(len(preview.previews)):  # no example renders reasoning now
            assert "[b $accent]" not in preview.render() and "Adding" not in preview.render()
            await pilot.press("right")
