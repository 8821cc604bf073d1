"""The directory that holds an experiment, and reading it back.

On disk, EXPERIMENT_DIR holds experiment.yaml (the variations in order, with what keeps any from running),
base.yaml (the base config, for the record) and configs/NAME.yaml for each variation that can run: its whole config,
with `training.output_dir` set to EXPERIMENT_DIR/NAME, so that `tuneterm train configs/NAME.yaml` trains exactly that
variation into its run directory here, whoever runs it (this machine's runner, a scheduler's job, another machine).
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tuneterm.config import RunConfig
from tuneterm.engine.experiment.definition import ExperimentSpec, Variation
from tuneterm.errors import RunDirError

EXPERIMENT_FILE = "experiment.yaml"
BASE_FILE = "base.yaml"
CONFIGS_DIR = "configs"


@dataclass(frozen=True)
class Experiment:
    """An experiment as its directory holds it."""

    directory: Path
    name: str
    base_source: str
    variations: list[Variation]
    varied: list[str]
    gpus: tuple[int, ...] = ()
    created: float = 0.0

    @property
    def runnable(self) -> list[Variation]:
        return [v for v in self.variations if not v.not_run]

    def run_dir(self, variation: Variation) -> Path:
        return self.directory / variation.name

    def config_path(self, variation: Variation) -> Path:
        return self.directory / CONFIGS_DIR / f"{variation.name}.yaml"

    def train_commands(self) -> list[str]:
        """One `tuneterm train` per variation that runs: each trains it into its run directory here."""
        return [f"tuneterm train {shlex.quote(str(self.config_path(v)))}" for v in self.runnable]


def is_experiment(path: Path) -> bool:
    return (path / EXPERIMENT_FILE).is_file()


def new_experiment_dir(spec: ExperimentSpec, runs_root: Path, out: Path | None = None) -> Path:
    """A new, empty directory for the experiment: `out`, or RUNS_ROOT/DATE-TIME-NAME. An existing non-empty
    directory is never used."""
    if out is not None:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise RunDirError(f"{out} already exists and is not empty; an experiment never writes into an existing "
                              "one. Choose a new directory.")
        path = out
    else:
        path = runs_root / f"{time.strftime('%Y%m%d-%H%M%S')}-{spec.name}"
        attempt = 1
        while path.exists():
            attempt += 1
            path = runs_root / f"{time.strftime('%Y%m%d-%H%M%S')}-{spec.name}-{attempt}"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create {path}: {exc.strerror or exc}. Choose a writable directory.") from None
    return path.resolve()


def write_experiment(spec: ExperimentSpec, variations: list[tuple[Variation, RunConfig | None]],
                     directory: Path) -> Experiment:
    """experiment.yaml, base.yaml and a config per variation that runs (its output directory its run directory
    here); a variation that does not run is written with why (Variation.not_run)."""
    (directory / CONFIGS_DIR).mkdir(exist_ok=True)
    spec.base.save(directory / BASE_FILE)
    for variation, config in variations:
        if config is not None and not variation.not_run:
            config.resolved({"training.output_dir": (str(directory / variation.name),
                                                     f"this variation's run directory in experiment {spec.name}")}
                            ).save(directory / CONFIGS_DIR / f"{variation.name}.yaml")
    experiment = Experiment(directory, spec.name, spec.base_source, [v for v, _ in variations], spec.varied, spec.gpus,
                            time.time())
    record = {"name": experiment.name, "base": experiment.base_source, "created": experiment.created,
              "varied": experiment.varied, "gpus": list(experiment.gpus),
              "variations": [{"name": v.name, "set": v.overrides,
                              **({"repeat_of": v.repeat_of} if v.repeat_of else {}),
                              **({"not_run": v.not_run} if v.not_run else {})} for v in experiment.variations]}
    (directory / EXPERIMENT_FILE).write_text(
        f"# tuneterm experiment {experiment.name}: {len(experiment.runnable)} variations of {spec.base_source} "
        f"({BASE_FILE}).\n# Each is a run of its own: `tuneterm train {CONFIGS_DIR}/NAME.yaml` trains it into NAME/ "
        f"here.\n" + yaml.safe_dump(record, sort_keys=False, width=120), encoding="utf-8")
    return experiment


def read_experiment(directory: Path) -> Experiment:
    """The experiment a directory holds; RunDirError when it holds none, or one that cannot be read."""
    path = directory / EXPERIMENT_FILE
    try:
        record = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{directory}: not a tuneterm experiment (no {EXPERIMENT_FILE})") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise RunDirError(f"{path} cannot be read: {str(exc).splitlines()[0]}") from None
    try:
        variations = [Variation(str(item["name"]), dict(item.get("set") or {}), repeat_of=item.get("repeat_of"),
                                not_run=str(item.get("not_run") or "")) for item in record["variations"]]
        return Experiment(directory.resolve(), str(record["name"]), str(record.get("base", "")), variations,
                          list(record.get("varied") or []), tuple(record.get("gpus") or ()),
                          float(record.get("created") or 0.0))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RunDirError(f"{path} is not an experiment as tuneterm writes one ({type(exc).__name__}: {exc})") from None


def list_experiments(root: Path) -> list[Experiment]:
    """The experiments under `root`, newest first; one that cannot be read is left out (its runs still list)."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if is_experiment(path):
            try:
                found.append(read_experiment(path))
            except RunDirError:
                continue
    return sorted(found, key=lambda e: (e.created, e.directory.name), reverse=True)
