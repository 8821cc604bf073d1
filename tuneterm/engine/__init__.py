"""The training engine: what one run does, from a resolved config to a saved, verified adapter, and everything
around it.

At its top, what every stage shares: the run's events (events.py), its control object (control.py), loading a
model (loading.py) and turning library output into events (capture.py). Then its stages, each importing only
the ones below it (an import-linter contract in pyproject.toml):
- run/: one run in this process: its plan (new, prepared, resumed), the runner, the trainer's assembly, the
  callback that turns the Trainer's hooks into events, failures explained, the adapter's check.
- after/ and launch/, side by side: after a run (report, card, plots, compare, generate, stop check, merge), and
  other processes (the launch command, distributed runs, detached runs, their supervisor, signals, the control
  channel).
- rundir/: the run directory on disk: its layout and lock, checkpoints, the fingerprint of what a run started
  from, and the list of runs.

Pure: no textual import. Importing this package imports nothing else, so that a monitor which only replays
events.jsonl can import `tuneterm.engine.events` alone; torch, transformers, trl and peft are imported inside the
functions that need them.
"""
