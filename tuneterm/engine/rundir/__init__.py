"""The run directory on disk: its layout, lock and checkpoints (layout.py), the fingerprint of what a run started
from (fingerprint.py), and the list of runs under a runs directory (runs.py)."""
