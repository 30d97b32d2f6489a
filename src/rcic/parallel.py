"""One way to spread work over processes: results in job order, the pool always shut down."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager


@contextmanager
def ordered_map(fn: Callable, jobs: list, workers: int) -> Iterator[Iterable]:
    """Yield an iterator of fn(job) for each job, in order: from `workers` processes, or in this
    process when one worker (or one job) makes a pool pointless. On leaving, even by an exception
    or Ctrl-C, jobs not started are cancelled and the pool is shut down."""
    pool = ProcessPoolExecutor(workers) if workers > 1 and len(jobs) > 1 else None
    try:
        yield pool.map(fn, jobs) if pool else map(fn, jobs)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
