"""Runs in other processes: the launch command (chosen GPUs, several processes or machines), what a process of a
distributed run knows of the others, detached runs and their supervisor, signals, the control channel through
which another terminal stops, saves or evaluates a run, and the run handle that sends those requests in-process or
through the channel, whichever reaches the run."""
