"""Shared fixtures: the tiny config, deterministic seeding, one Ray cluster per test session."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rvc_ray.config import RunConfig, load_run_config

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Seed python, numpy and torch before every test (torch only if already imported)."""
    random.seed(1234)
    np.random.seed(1234)
    import sys

    if "torch" in sys.modules:
        import torch

        torch.manual_seed(1234)


@pytest.fixture
def tiny_cfg() -> RunConfig:
    """The tiny CPU preset used by tests and the demo."""
    return load_run_config("tiny_cpu")


@pytest.fixture(scope="session")
def demo_corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo corpus (2 speakers x 20 s), generated once per session."""
    from rvc_ray.demo_corpus import generate_demo_corpus

    out = tmp_path_factory.mktemp("demo_corpus")
    generate_demo_corpus(out, num_speakers=2, seconds_per_speaker=20.0, seed=0)
    return out


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """One local Ray cluster for the whole session: 4 logical CPUs, a tune_driver resource, dashboard on.

    Logical CPUs exceed the 2 cores on purpose (Ray Data + 2 Train workers must fit at once); the
    dashboard stays on because Train V2 needs the State API to clean up placement groups.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(
        num_cpus=4,
        resources={"tune_driver": 4},
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        object_store_memory=512 * 1024**2,
        logging_config=ray.LoggingConfig(log_level="WARNING"),
    )
    try:
        yield
    finally:
        ray.shutdown()
