"""Shared by the benchmark scripts: run a command as its own process, measure it."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak resident MB) of one child process; raises SystemExit if it fails.

    The child's stderr (progress bars, logs) goes to a temporary file, never to a pipe nobody reads
    while it runs (a full pipe would block the child).
    """
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=err, env=env or os.environ.copy()
        )
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise SystemExit(f"{cmd} failed: {err.read().decode(errors='replace')[-3000:]}")
    return seconds, usage.ru_maxrss / 1024
