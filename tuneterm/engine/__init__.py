"""The training engine: run(plan, sink, control), its events, its control object and its run directories.

Pure: no textual import. Heavy libraries (torch, transformers, trl, peft) are imported inside the functions
that need them, so importing this package stays fast.
"""

from tuneterm.engine.control import RunControl
from tuneterm.engine.runner import RunPlan, new_run, resume_run, run

__all__ = ["RunControl", "RunPlan", "new_run", "resume_run", "run"]
