"""Runs in other processes: the launch command (chosen GPUs, several processes or machines), what a process of a
distributed run knows of the others, detached runs and their supervisor, signals, and the control channel through
which another terminal stops, saves or evaluates a run."""
