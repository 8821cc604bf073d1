"""Command-line entry points: `tuneterm train`, `tuneterm plan`, `tuneterm inspect`, `tuneterm demo`.

Each command parses its arguments, builds a run config and hands it to the engine; nothing here knows how
training works. Importing this module (and `tuneterm --help`) must stay free of torch and the Hugging Face
libraries, so the engine is imported inside the commands.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneterm import __version__
from tuneterm.config import RunConfig, load_config
from tuneterm.errors import ConfigError, RunDirError, TuneTermError, listed

if TYPE_CHECKING:
    from tuneterm.ui.app import Opening

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    if not argv or argv[0] not in COMMANDS and not argv[0].startswith("-") or argv[0] == "--runs-dir":
        args = _app_parser().parse_args(argv)
        args.command, args.name = _app, "app"
    else:
        args = parser.parse_args(argv)
    if not hasattr(args, "command"):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.command(args)
    except ConfigError as exc:
        print(f"{exc.summary}\n{listed(exc.problems)}", file=sys.stderr)
        return EXIT_USAGE
    except RunDirError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except TuneTermError as exc:
        print(f"tuneterm {args.name}: {exc}", file=sys.stderr)
        return EXIT_FAILED


COMMANDS = ("train", "plan", "inspect", "demo", "monitor", "runs", "stop", "chat", "merge", "compare")


def _app_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneterm", description="Open the app: a new run, or CONFIG.yaml in the "
                                                                  "wizard's review step.")
    parser.add_argument("config", nargs="?", type=Path, help="a run config to review and launch")
    _runs_dir_argument(parser)
    return parser


def _runs_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), metavar="DIR",
                        help="where new run directories are created and runs are listed from (default: ./runs)")


def _parser() -> argparse.ArgumentParser:
    from tuneterm.plan.memory import STRATEGIES

    parser = argparse.ArgumentParser(prog="tuneterm", usage="tuneterm [CONFIG.yaml] [--runs-dir DIR] | tuneterm "
                                                            "COMMAND ...",
                                     description="LoRA / QLoRA fine-tuning from a terminal. Without a command, "
                                                 "the app opens (with CONFIG.yaml: at its review step).")
    parser.add_argument("--version", action="version", version=f"tuneterm {__version__}")
    commands = parser.add_subparsers(metavar="COMMAND")

    train = commands.add_parser("train", help="train headless from a config file",
                                description="Train from CONFIG.yaml without the TUI, printing progress.")
    _config_arguments(train)
    train.add_argument("--resume", type=Path, metavar="RUN_DIR",
                       help="continue a stopped or interrupted run from its last complete checkpoint")
    _runs_dir_argument(train)
    train.add_argument("--detach", action="store_true",
                       help="run in a process of its own that outlives the terminal; print its run directory")
    train.add_argument("--prepared", type=Path, help=argparse.SUPPRESS)  # the process --detach starts
    launch = train.add_argument_group("several GPUs or machines (a new run: started through accelerate launch, "
                                      "whose command is printed and kept in the run directory)")
    launch.add_argument("--gpus", metavar="LIST", help="GPUs to train on, as nvidia-smi numbers them: 0,1 or 0-3")
    launch.add_argument("--strategy", choices=STRATEGIES,
                        help="how the GPUs share the work (default: single for one GPU, ddp for more)")
    launch.add_argument("--cpu-processes", type=int, metavar="N", help="N processes on the CPU instead of GPUs")
    launch.add_argument("--machines", type=int, default=1, metavar="N",
                        help="machines training together, each with the same GPUs (this one is machine 0)")
    launch.add_argument("--main-address", metavar="HOST[:PORT]",
                        help="this machine's address as the others reach it, with --machines")
    train.set_defaults(command=_train, name="train")

    plan = commands.add_parser("plan", help="show what a run will cost and what the guides advise, without training",
                               description="Everything knowable before training: model, data statistics, "
                                           "schedule, memory per GPU with a verdict, and advice. No GPU or network "
                                           "needed beyond the model's config.json and tokenizer.")
    _config_arguments(plan)
    plan.add_argument("--world-size", type=int, default=1, metavar="N", help="number of GPUs (processes)")
    plan.add_argument("--strategy", choices=STRATEGIES, default="ddp",
                      help="how several GPUs share the work: memory per GPU follows (default ddp: a full replica each)")
    plan.add_argument("--gpu-memory", type=float, metavar="GB",
                      help="plan for a GPU with this much free memory (bf16-capable) instead of this machine's")
    plan.add_argument("--json", action="store_true", help="print JSON instead of text")
    plan.set_defaults(command=_plan, name="plan")

    inspect = commands.add_parser("inspect", help="check a dataset with a model's tokenizer and chat template",
                                  description="Format and evidence, every invalid record with its line, token "
                                              "statistics, what a max length cuts, the checks that would block a "
                                              "run, and examples with the trained text highlighted.")
    inspect.add_argument("data", help="a .jsonl/.json/.csv/.parquet file, a directory, or a hub dataset id")
    inspect.add_argument("--model", required=True,
                         help="model directory or hub id (the tokenizer files and config.json are enough)")
    inspect.add_argument("--max-length", type=int, metavar="N", help="report truncation at N (default: the "
                                                                      "suggested max length)")
    inspect.add_argument("--samples", type=int, default=3, metavar="K", help="examples to show (default 3)")
    inspect.add_argument("--format", default="auto", help="override the detected format")
    inspect.add_argument("--columns", metavar="YAML", help="map column names, e.g. '{instruction: question}'")
    inspect.add_argument("--train-on", choices=("responses", "all"), default="responses")
    inspect.add_argument("--chat-template", metavar="FILE_OR_TEMPLATE", help="use this chat template instead")
    inspect.add_argument("--memory-limited", action="store_true",
                         help="suggest the 95th percentile instead of the 99th")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")
    inspect.set_defaults(command=_inspect, name="inspect")

    monitor = commands.add_parser("monitor", help="watch a run, live or finished, from any terminal",
                                  description="Open the monitor on a run directory: a finished run is replayed, a "
                                              "live one followed, with stop, save-now, evaluate-now and patience.")
    monitor.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    monitor.set_defaults(command=_monitor, name="monitor")

    runs = commands.add_parser("runs", help="list the runs of a runs directory and open one",
                               description="The runs with their status (running, completed, stopped, failed, "
                                           "interrupted...), step and best eval loss; enter opens one.")
    _runs_dir_argument(runs)
    runs.add_argument("--plain", action="store_true", help="print the list instead of opening the app")
    runs.set_defaults(command=_runs, name="runs")

    stop = commands.add_parser("stop", help="stop a running run after its current step, with a checkpoint",
                               description="Ask a run (whoever started it) to finish the current step, save a "
                                           "checkpoint and the adapter, and stop; wait until it has.")
    stop.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    stop.add_argument("--no-wait", action="store_true", help="ask and return at once")
    stop.add_argument("--timeout", type=float, default=600, metavar="SECONDS",
                      help="how long to wait for the run to stop (default 600)")
    stop.set_defaults(command=_stop, name="stop")

    chat = commands.add_parser("chat", help="talk to a run's tuned model, next to its base model",
                               description="Generate from the tuned model (and with --compare-base from the base "
                                           "model, the same weights with the adapter off) with the run's chat "
                                           "template: one answer with --prompt, a conversation of single turns "
                                           "otherwise (ctrl+c stops an answer, ctrl+d leaves).")
    chat.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    chat.add_argument("--prompt", help="answer this and exit")
    chat.add_argument("--compare-base", action="store_true", help="also answer with the adapter switched off")
    chat.add_argument("--max-new-tokens", type=int, default=256, metavar="N")
    chat.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 (the default) is greedy")
    chat.add_argument("--top-p", type=float, default=1.0, metavar="P")
    chat.add_argument("--stop-check", action="store_true",
                      help="instead of chatting: check that answers to eval prompts end, and record it in the run")
    chat.set_defaults(command=_chat, name="chat")

    merge = commands.add_parser("merge", help="merge a run's adapter into its base model: one standalone model",
                                description="Write the base model with the adapter merged in (safetensors, "
                                            "tokenizer, chat template, generation config) to a new directory, "
                                            "after checking that its logits equal base + adapter.")
    merge.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    merge.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="a new (or empty) directory")
    merge.add_argument("--scale", type=float, default=1.0, metavar="S",
                       help="the adapter's strength, e.g. 0.5 for an overfitted adapter (lora_alpha x S; default 1)")
    merge.set_defaults(command=_merge, name="merge")

    compare = commands.add_parser("compare", help="overlay the loss curves of several runs; list their differences",
                                  description="The train and eval losses of the runs on one set of axes, and the "
                                              "settings that differ between them.")
    compare.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    compare.add_argument("--out", type=Path, metavar="PNG", help="write the curves to this picture")
    compare.add_argument("--by", choices=("step", "tokens"), default="step", help="align the curves by step or by "
                                                                                    "tokens seen (default: step)")
    compare.set_defaults(command=_compare, name="compare")

    demo = commands.add_parser("demo", help="fine-tune the built-in tiny model (offline, CPU, a few minutes)",
                               description="Build (once) a tiny model and chat dataset and fine-tune a LoRA "
                                           "adapter on them. Works offline and on a CPU.")
    demo.add_argument("--headless", action="store_true", help="train at once, printing progress as text (no app)")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override one value of the demo config")
    _runs_dir_argument(demo)
    demo.set_defaults(command=_demo, name="demo")
    return parser


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", type=Path, help="the run config (YAML)")
    parser.add_argument("--preset", metavar="NAME",
                        help="start from a preset (cpu-quick-test, lora-small-model, qlora-7b-24gb, style-transfer, "
                             "knowledge-injection, classification); the config file and --set override it")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set training.learning_rate=1e-4 (repeatable)")


def _plan(args: argparse.Namespace) -> int:
    import json

    from tuneterm.hardware import hypothetical_gpu
    from tuneterm.plan.planner import make_plan
    from tuneterm.plan.report import format_plan, plan_to_json

    config = load_config(args.config, preset=args.preset, overrides=args.overrides)
    gpus = hypothetical_gpu(args.gpu_memory) if args.gpu_memory else None
    plan = make_plan(config, world_size=args.world_size, gpus=gpus, strategy=args.strategy)
    print(json.dumps(plan_to_json(plan), indent=2) if args.json else format_plan(plan))
    if plan.blocking:
        print(f"\n{len(plan.blocking)} problem{'s' if len(plan.blocking) > 1 else ''} would stop tuneterm train "
              "(listed above as Problem).", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    import json

    import yaml

    from tuneterm.data.inspect import format_report, inspect_data, report_to_json
    from tuneterm.data.tokenizer import load_tokenizer

    try:
        columns = yaml.safe_load(args.columns) if args.columns else None
    except yaml.YAMLError:
        columns = args.columns  # validation below says what a mapping should look like
    mapping = {"model": {"path": args.model, "chat_template": args.chat_template},
               "data": {"train": args.data, "format": args.format, "columns": columns}}
    config = load_config(base=mapping, base_source="tuneterm inspect")
    tokenizer, template_warnings = load_tokenizer(config)
    report = inspect_data(config.get("data.train"), tokenizer, fmt=args.format, columns=config.get("data.columns"),
                          train_on=args.train_on, max_length=args.max_length, samples=args.samples,
                          context_length=_context_length_or_none(config), memory_limited=args.memory_limited,
                          template_warnings=template_warnings)
    if args.json:
        print(json.dumps(report_to_json(report), indent=2, ensure_ascii=False))
    else:
        print(format_report(report, color=sys.stdout.isatty()))
    return EXIT_FAILED if report.blocking else EXIT_OK


def _context_length_or_none(config: RunConfig) -> int | None:
    """A tokenizer-only directory has no config.json: then there is no context length to cap at."""
    from tuneterm.plan.planner import model_facts

    try:
        return model_facts(config).context_length
    except TuneTermError:
        return None


def _train(args: argparse.Namespace) -> int:
    from functools import partial

    from tuneterm.engine.launch import distributed
    from tuneterm.engine.launch.command import launch_for, launch_spec, prepare_launch
    from tuneterm.engine.launch.detach import LOG_FILE, start_detached
    from tuneterm.engine.launch.supervisor import supervise
    from tuneterm.engine.run.plans import new_run, planned_by_main, prepared_run, resume_run
    from tuneterm.engine.rundir.layout import CONFIG_FILE

    spec = launch_spec(args.gpus, args.strategy, args.cpu_processes, args.machines, args.main_address)
    if args.resume and (args.config or args.preset):
        print("tuneterm train --resume takes the run directory (and --set for what may change on resume): a "
              "resumed run keeps its own config.yaml", file=sys.stderr)
        return EXIT_USAGE
    if spec is not None and (args.resume or args.prepared or distributed.launched()):
        print("tuneterm train: --gpus, --strategy, --cpu-processes and --machines launch a new run; a run resumes "
              "the way it was launched", file=sys.stderr)
        return EXIT_USAGE
    # A run launched on several GPUs (its launch.json) resumes the same way, started from here.
    launch = launch_for(args.resume, resume=True) if args.resume and not distributed.launched() \
        and not distributed.supervised() else None
    if args.prepared:
        plan = planned_by_main(partial(prepared_run, args.prepared), partial(load_config, args.prepared / CONFIG_FILE))
    elif args.resume:
        plan = planned_by_main(partial(resume_run, args.resume, args.overrides, launch.spec.world_size if launch
                                       else None),
                               partial(load_config, args.resume / CONFIG_FILE, overrides=args.overrides))
    elif args.config is None and args.preset is None and not args.overrides:
        print("tuneterm train: give a CONFIG.yaml (or --preset, or --set KEY=VALUE for each setting), or "
              "--resume RUN_DIR", file=sys.stderr)
        return EXIT_USAGE
    else:
        config = load_config(args.config, preset=args.preset, overrides=args.overrides)
        plan = planned_by_main(partial(new_run, config, args.runs_dir), lambda: config)
    if spec is not None:
        launch = prepare_launch(plan.run_dir, spec)
    if launch is not None:
        print(f"Command: {launch.shell()}", flush=True)
        for machine in range(1, launch.spec.num_machines):
            print(f"  machine {machine} runs: {launch.on_machine(machine).shell()}", flush=True)
    if args.detach and not distributed.launched():
        pid = start_detached(plan.run_dir, resume=plan.resume_from is not None)
        print(f"Run directory: {plan.run_dir}\nRunning detached (process {pid}); it goes on when this terminal "
              f"closes. Its output: {plan.run_dir / LOG_FILE}\n"
              f"  watch it:  tuneterm monitor {plan.run_dir}\n  stop it:   tuneterm stop {plan.run_dir}")
        return EXIT_OK
    if launch is not None:
        return EXIT_OK if supervise(plan.run_dir, list(launch.argv), launch.env, echo=True) == 0 else EXIT_FAILED
    return _run_headless(plan)


def _has_terminal() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def _run_app(runs_dir: Path, opening: Opening) -> int:
    """The app draws on a terminal and reads keys from it: without one it would wait for keys forever."""
    from tuneterm.ui.app import make_app
    from tuneterm.ui.services import Services

    if not _has_terminal():
        print("tuneterm: the app needs a terminal, and stdin or stdout is not one. Without a terminal: "
              "`tuneterm train CONFIG.yaml` trains, `tuneterm demo --headless` runs the demo, "
              "`tuneterm runs --plain` lists the runs, `tuneterm stop RUN_DIR` stops one.", file=sys.stderr)
        return EXIT_USAGE
    make_app(Services(runs_dir=runs_dir), opening).run()
    return EXIT_OK


def _monitor(args: argparse.Namespace) -> int:
    from tuneterm.ui.app import Opening

    if not (args.run_dir / "config.yaml").is_file():
        print(f"tuneterm monitor: {args.run_dir} is not a tuneterm run directory (no config.yaml)", file=sys.stderr)
        return EXIT_USAGE
    return _run_app(args.run_dir.parent, Opening("monitor", run_dir=args.run_dir))


def _runs(args: argparse.Namespace) -> int:
    from tuneterm.engine.rundir.runs import list_runs

    if args.plain:
        runs = list_runs(args.runs_dir)
        if not runs:
            print(f"No runs in {args.runs_dir}.", file=sys.stderr)
        for summary in runs:
            best = f"{summary.best_eval_loss:.4f}" if summary.best_eval_loss is not None else "-"
            total = f"/{summary.total_steps}" if summary.total_steps else ""
            print(f"{summary.status:13s} {summary.step:>7}{total:<8} best {best:>8}  {summary.method or '?':6s} "
                  f"{summary.run_dir}")
        return EXIT_OK
    from tuneterm.ui.app import Opening

    return _run_app(args.runs_dir, Opening("runs"))


def _stop(args: argparse.Namespace) -> int:
    import time

    from tuneterm.engine.launch.channel import send
    from tuneterm.engine.launch.distributed import processes_left
    from tuneterm.engine.rundir.layout import is_live
    from tuneterm.engine.rundir.runs import summarise_run

    summary = summarise_run(args.run_dir)
    if summary is None:
        print(f"tuneterm stop: {args.run_dir} is not a tuneterm run directory", file=sys.stderr)
        return EXIT_USAGE
    if not is_live(args.run_dir):
        print(f"{args.run_dir} is not running (it is {summary.status.replace('_', ' ')}).", file=sys.stderr)
        return EXIT_FAILED
    send(args.run_dir, "stop", reason="tuneterm stop")
    print(f"Asked {args.run_dir} to stop after its current step and save a checkpoint.", flush=True)
    if args.no_wait:
        return EXIT_OK
    deadline = time.monotonic() + args.timeout
    while is_live(args.run_dir) or processes_left(args.run_dir):  # a distributed run: all its processes gone
        if time.monotonic() > deadline:
            print(f"It is still running after {args.timeout:.0f} s (a long step or save?); it will stop when it "
                  "can.", file=sys.stderr)
            return EXIT_FAILED
        time.sleep(0.5)
    summary = summarise_run(args.run_dir)
    assert summary is not None
    print(f"Stopped at step {summary.step:,} ({summary.status.replace('_', ' ')}). Continue it with: "
          f"tuneterm train --resume {args.run_dir}")
    return EXIT_OK


def _chat(args: argparse.Namespace) -> int:
    from tuneterm.engine.after.generate import GenerationSettings, TunedModel

    settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p)
    if settings.problems():
        print("tuneterm chat: " + "; ".join(settings.problems()), file=sys.stderr)
        return EXIT_USAGE
    print(f"Loading {args.run_dir}...", file=sys.stderr, flush=True)
    model = TunedModel.load(args.run_dir)
    if args.compare_base and not model.has_adapter:
        print("tuneterm chat: a full fine-tune has no adapter to switch off, so there is no base to compare with",
              file=sys.stderr)
        return EXIT_USAGE
    if args.stop_check:
        from tuneterm.engine.after.stopcheck import check_stopping, save_stop_check

        check = check_stopping(model, model.eval_samples())
        print(f"Stop check: {check.summary()}")
        for runaway in check.runaway:
            print(f"  {runaway.where}: {runaway.question!r} -> {runaway.generated[:120]!r}...")
        for cause in check.causes[1:] + check.notes:
            print(f"  also: {cause}")
        print(f"Recorded in {save_stop_check(check, args.run_dir)}")
        return EXIT_OK if check.passed or not check.checked else EXIT_FAILED
    print(f"{settings.describe()}; stops at {', '.join(model.describe()['stop_tokens'])}", file=sys.stderr)
    if args.prompt is not None:
        _answer(model, args.prompt, settings, args.compare_base)
        return EXIT_OK
    print("Type a message (ctrl+c stops an answer, ctrl+d leaves).", file=sys.stderr)
    while True:
        try:
            prompt = input("\n> ")
        except EOFError:
            print()
            return EXIT_OK
        except KeyboardInterrupt:
            print()
            return EXIT_INTERRUPTED
        if prompt.strip():
            try:
                _answer(model, prompt, settings, args.compare_base)
            except KeyboardInterrupt:
                print("\n[stopped]")


def _answer(model: Any, prompt: str, settings: Any, compare_base: bool) -> None:
    ids = model.prompt_ids(prompt)
    for label, adapter in (("tuned", True), ("base", False))[:2 if compare_base else 1]:
        if compare_base:
            print(f"[{label}] ", end="", flush=True)
        generation = model.generate(ids, settings, adapter=adapter, on_text=lambda text: print(text, end="",
                                                                                              flush=True))
        print(f"\n[{generation.tokens} tokens, ran to the limit without ending]" if generation.hit_limit else "")


def _merge(args: argparse.Namespace) -> int:
    from tuneterm.engine.after.merge import merge
    from tuneterm.plan.memory import size

    result = merge(args.run_dir, args.out_dir, args.scale, lambda phase: print(f"{phase}...", flush=True))
    for note in result.notes:
        print(f"Note: {note}")
    print(f"Merged model: {result.out_dir} ({size(result.bytes_written)}, {result.dtype}). Its logits equal "
          f"base + adapter within {result.max_logit_difference:.2g} (allowed {result.tolerance:g} of the largest, "
          f"{result.largest_logit:.3g}) on {result.probes} prompts.\nLoad it with "
          f"AutoModelForCausalLM.from_pretrained(\"{result.out_dir}\").")
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    from tuneterm.engine.after.compare import differing_settings, load_curves, save_comparison

    curves = load_curves(args.run_dirs, args.by)
    for run in curves:
        last = f"{run.train[-1][1]:.4f}" if run.train else "-"
        best = f"{min(v for _, v in run.eval):.4f}" if run.eval else "-"
        print(f"{run.colour}  {run.name}: last train loss {last}, lowest eval loss {best}")
    differing = differing_settings(curves)
    if differing:
        print("\nSettings that differ:")
        for key, values in differing:
            print(f"  {key}: " + " | ".join(str(v) for v in values))
    else:
        print("\nThe runs have the same settings.")
    if args.out:
        print(f"\nCurves: {save_comparison(curves, args.out, args.by)}")
    return EXIT_OK


def _app(args: argparse.Namespace) -> int:
    from tuneterm.ui.app import Opening
    from tuneterm.ui.draft import Draft

    opening = Opening()
    if args.config is not None:
        opening = Opening("wizard", Draft.from_file(args.config), "review")
    return _run_app(args.runs_dir, opening)


def _demo(args: argparse.Namespace) -> int:
    from tuneterm.demo import demo_config, demo_dir
    from tuneterm.engine.run.plans import new_run

    if not args.headless:
        from tuneterm.ui.app import Opening

        return _run_app(args.runs_dir, Opening(demo=True, demo_overrides=tuple(args.overrides)))

    print("Preparing the demo model and data (built once, then cached)...", flush=True)
    directory = demo_dir()
    config: RunConfig = load_config(overrides=args.overrides, base=demo_config(directory), base_source="demo")
    print(f"Demo model and data: {directory}", flush=True)
    return _run_headless(new_run(config, args.runs_dir))


def _run_headless(plan: Any) -> int:
    from tuneterm.console import ConsoleProgress
    from tuneterm.engine.control import RunControl
    from tuneterm.engine.events import RunFailed, RunFinished
    from tuneterm.engine.launch import distributed
    from tuneterm.engine.launch.signals import StopOnSignals
    from tuneterm.engine.run.runner import run

    main = distributed.is_main()  # under a launcher the main process speaks for the run, the others only of failing
    if main:
        print(f"Run directory: {plan.run_dir}", flush=True)
    control = RunControl()
    announce = (lambda message: print(f"\n{message}", file=sys.stderr, flush=True)) if main else (lambda message: None)
    try:
        with StopOnSignals(control, announce, echo_seconds=2.0 if distributed.launched() else 0.0):
            result = run(plan, ConsoleProgress() if main else None, control)
    except KeyboardInterrupt:
        if main:
            print(f"Aborted. Continue from the last complete checkpoint with: tuneterm train --resume {plan.run_dir}",
                  file=sys.stderr)
        return EXIT_INTERRUPTED
    if not main and isinstance(result, RunFailed):
        print(f"[rank {distributed.rank()}] {ConsoleProgress().format(result)}", file=sys.stderr, flush=True)
    return EXIT_OK if isinstance(result, RunFinished) else EXIT_FAILED
