"""GPU tests: every test here is marked ``gpu`` and skipped (not errored) where CUDA is not available.

Run them with ``pytest -m gpu`` (``scripts/gpu_check.sh`` does, in its own CUDA venv). Each module sets
``pytestmark = pytest.mark.gpu`` itself, so ``-m gpu`` selects it whatever the hook order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every ``gpu`` test when torch sees no CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture
def cuda() -> torch.device:
    """The current CUDA device."""
    import torch

    return torch.device("cuda", torch.cuda.current_device())


@pytest.fixture(scope="session")
def gpu_ray_cluster() -> Iterator[None]:
    """One local Ray cluster with every GPU of this machine and at least 4 logical CPUs."""
    import os

    import ray
    import torch

    if ray.is_initialized():
        yield
        return
    ray.init(
        num_cpus=max(4, os.cpu_count() or 4),
        num_gpus=torch.cuda.device_count(),
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        logging_config=ray.LoggingConfig(log_level="WARNING"),
    )
    try:
        yield
    finally:
        ray.shutdown()
