"""Time from starting `tuneterm` to its first painted screen, in a real pseudo-terminal.

Starts the app in a pty of 100x30 (as a terminal would), reads what it writes, and stops the clock when the start
screen's text has been drawn; then quits it. For scale, the same number of `python -c "import torch"` runs are
timed, alternating with the app's. Prints the median and the spread of each.

    python bench/startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import select
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time

MARKER = b"New run"


def time_to_first_screen(workdir: str, timeout: float = 30.0) -> float:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "tuneterm"], stdin=slave, stdout=slave, stderr=slave,
                               cwd=workdir, env=env, close_fds=True)
    os.close(slave)
    seen = b""
    elapsed = None
    try:
        while time.perf_counter() - started < timeout:
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
                if MARKER in seen.replace(b"\x1b[", b""):
                    elapsed = time.perf_counter() - started
                    break
    finally:
        os.write(master, b"\x11")  # ctrl+q
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
        os.close(master)
    if elapsed is None:
        raise RuntimeError("the start screen never appeared")
    return elapsed


def time_torch_import() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    app, torch = [], []
    with tempfile.TemporaryDirectory() as workdir:
        time_to_first_screen(workdir)  # the first start fills the file cache; not counted
        for _ in range(args.runs):
            app.append(time_to_first_screen(workdir))
            torch.append(time_torch_import())
    for name, values in (("tuneterm, start to first screen", app), ("python -c 'import torch'", torch)):
        print(f"{name:34s} median {statistics.median(values):.2f} s  (min {min(values):.2f}, max {max(values):.2f}, "
              f"{len(values)} runs)")


if __name__ == "__main__":
    main()
