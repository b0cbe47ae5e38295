"""Connecting to (or starting) the Ray cluster a job runs on."""

from __future__ import annotations

import os

__all__ = ["ensure_ray"]


def ensure_ray(num_cpus: int | None = None, *, tune_driver_slots: int = 4) -> None:
    """Connect to the cluster in ``RAY_ADDRESS`` (as set by ``ray job submit``) or start a local one.

    A local cluster gets ``max(4, os.cpu_count())`` logical CPUs unless ``num_cpus`` is given: on a
    2-core machine, Ray Data stages and 2 Train workers must fit at once (see docs/ray-notes, Data +
    Train deadlock). It also gets a custom ``tune_driver`` resource so Tune trial drivers never hold
    a CPU that their own Train workers need. The dashboard stays on: Train V2 needs it to clean up
    placement groups.
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return
    cpus = num_cpus if num_cpus is not None else max(4, os.cpu_count() or 1)
    ray.init(
        num_cpus=cpus,
        resources={"tune_driver": tune_driver_slots},
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        logging_config=ray.LoggingConfig(log_level="WARNING"),
    )
