"""Experiments: one base config and its variations, each trained as a run of its own, then compared.

The way people find good settings (the complete guide's last section): a base configuration and a handful of
variations that each change one or two things, run one after another, and a table of their losses with the best
one marked. An experiment is a directory holding its definition and one ordinary run directory per variation, so
everything that works on a run (monitor, stop, resume, summary, chat, export) works on each of them, and each
variation is a `tuneterm train` of its own config file, which a cluster scheduler can run as well as this machine.

The stage sits above run/: it starts runs as `tuneterm train` does and reads them as the summary does.
- definition.py: the variations (a grid, a list, or both), checked and named.
- directory.py: the experiment's directory, written and read back.
- plan.py: each variation's plan before anything runs (steps, memory against the free memory, time from a
  measured rate), and those that cannot run, with why.
- runner.py: running the variations, one after another in one process or one per GPU side by side; stopping and
  going on where it stopped.
- results.py: the table of results, the best variation by eval loss, the eval noise that makes a difference a tie,
  the findings.
- tables.py: the results as text for the app and the command line, and as the README.md, PNG and JSON of the
  experiment's directory.
"""
