"""`python -m tuneterm`: the same entry point as the `tuneterm` command."""

from tuneterm.cli import main

raise SystemExit(main())
