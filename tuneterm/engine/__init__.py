"""The training engine: run(plan, sink, control) in runner.py, its events (events.py), its control object
(control.py) and its run directories (rundir.py).

Pure: no textual import. Importing this package imports nothing else, so that a monitor which only replays
events.jsonl can import `tuneterm.engine.events` alone; torch, transformers, trl and peft are imported inside the
functions that need them.
"""
