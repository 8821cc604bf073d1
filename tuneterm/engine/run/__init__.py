"""One run in this process: its plan (plans.py), how a run is started from a command or the app: new, resumed,
prepared, again, detached (start.py), running it (runner.py), the Hugging Face objects it trains with
(trainer.py), the callback that reports the Trainer's progress as events, failures explained, and the check that
the adapter saved is the one trained."""
