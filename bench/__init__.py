"""Benchmarks, each a script run from the repository root (python bench/NAME.py); tests import their parts."""
