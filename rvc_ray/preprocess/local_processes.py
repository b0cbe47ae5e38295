"""Worker processes on this machine for the preprocessing work, when no Ray cluster is in use.

A stand-alone ``rvc-ray preprocess`` on one machine (no ``RAY_ADDRESS``, not connected to Ray) would
otherwise start a local Ray cluster only to run a handful of CPU-bound tasks: ~4 s of start-up and ~1 s of
shutdown on 2 cores, and ~0.4 GB of Ray's own processes (docs/benchmarks.md). These workers run the same
task functions as the Ray tasks do, so the output is the same bytes.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

__all__ = ["THREAD_LIMIT_VARIABLES", "WORKER_MODULES", "local_worker_pool"]

# What Ray sets for a task's process from its num_cpus; the workers get the same, so the per-file work runs
# with the same thread counts on either engine.
THREAD_LIMIT_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# What the per-file work imports (~1 s on 2 cores, scipy.signal alone ~0.6 s): imported once by the fork
# server, which the workers are forked from, or by each spawned worker as it starts.
WORKER_MODULES = ("rvc_ray.preprocess.pipeline", "scipy.signal", "soxr", "soundfile", "pyarrow.parquet")


def _started() -> int:
    for name in WORKER_MODULES:  # already there in a forked worker; a spawned one imports while the driver works
        importlib.import_module(name)
    return os.getpid()


def _start_method() -> multiprocessing.context.BaseContext:
    """``forkserver`` with :data:`WORKER_MODULES` preloaded where the platform has it (Linux, macOS), else
    ``spawn``: both start workers from a process without the driver's threads, so neither can inherit a
    lock a driver thread held."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(WORKER_MODULES))
    return context


@contextlib.contextmanager
def local_worker_pool(workers: int, threads_per_worker: int) -> Iterator[ProcessPoolExecutor]:
    """``workers`` Python processes (:func:`_start_method`), started at once so that they are ready when the
    driver's readiness pass ends, each limited to ``threads_per_worker`` threads (the variables Ray would
    set, unless the user set them).

    The fork server is started once per driver process, by its first pool, and keeps that pool's thread
    limits for the later ones (the CLI runs one pool; so does each ``run_preprocess`` on the same settings).
    """
    limits = {name: str(max(1, threads_per_worker)) for name in THREAD_LIMIT_VARIABLES if name not in os.environ}
    os.environ.update(limits)  # the fork server or a spawned process starts with the parent's environment
    try:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=_start_method())
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
