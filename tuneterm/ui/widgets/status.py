"""The colour of a run's status, wherever a list of runs shows it (the start screen's runs, an experiment's table)."""

STATUS_COLOURS = {"running": "accent", "completed": "success", "early_stopped": "success", "stopped": "warning",
                  "failed": "error", "interrupted": "error", "not run": "error", "pending": "text-muted",
                  "finished": "success", "incomplete": "warning", "not started": "text-muted"}
"""A run's status, a variation's or an experiment's -> theme variable."""
