"""Worker processes on this machine for the preprocessing work, when no Ray cluster is in use.

A stand-alone ``rvc-ray preprocess`` on one machine (no ``RAY_ADDRESS``, not connected to Ray) would
otherwise start a local Ray cluster only to run a handful of CPU-bound tasks: ~4 s of start-up and ~1 s of
shutdown on 2 cores, and ~0.4 GB of Ray's own processes (docs/benchmarks.md). These workers run the same
task functions as the Ray tasks do, so the output is the same bytes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

__all__ = ["THREAD_LIMIT_VARIABLES", "local_worker_pool"]

# What Ray sets for a task's process from its num_cpus; the workers get the same, so the per-file work runs
# with the same thread counts on either engine.
THREAD_LIMIT_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _started() -> int:
    return os.getpid()


@contextlib.contextmanager
def local_worker_pool(workers: int, threads_per_worker: int) -> Iterator[ProcessPoolExecutor]:
    """``workers`` fresh Python processes (``spawn``: safe beside the driver's threads), started at once so
    they import while the driver does other work, each limited to ``threads_per_worker`` threads (the
    variables Ray would set, unless the user set them)."""
    limits = {name: str(max(1, threads_per_worker)) for name in THREAD_LIMIT_VARIABLES if name not in os.environ}
    os.environ.update(limits)  # a spawned process starts with the parent's environment
    try:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
        for _ in range(workers):  # one process is started per submission while none is idle
            pool.submit(_started)
    finally:
        for name in limits:
            os.environ.pop(name, None)
    try:
        yield pool
    except BaseException:  # an error or Ctrl-C in the driver: drop the queued tasks, do not run them all first
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
