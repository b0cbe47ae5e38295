"""Connecting to (or starting) the Ray cluster a job runs on."""

from __future__ import annotations

import logging
import os

__all__ = ["RAY_DATA_LIMITS_REFRESH_S", "ensure_ray", "shorten_ray_data_limits_refresh"]

logger = logging.getLogger(__name__)

RAY_DATA_LIMITS_REFRESH_S = 0.1


def shorten_ray_data_limits_refresh(interval_s: float = RAY_DATA_LIMITS_REFRESH_S) -> bool:
    """Make Ray Data learn the cluster's CPUs within ``interval_s`` of a dataset starting, not 1 s.

    Ray 2.60's streaming executor asks the autoscaling coordinator actor for its share of the cluster
    asynchronously: the first answer it reads is empty, and it re-reads only after
    ``ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S`` (1 s). Until then a dataset runs **one task at
    a time**, whatever the cluster size: on the 2-core machine that made the preprocessing stage about
    0.4 s slower per run (docs/benchmarks.md). This lowers that private class attribute for this
    driver process (every dataset it runs afterwards); the stages that build Ray Data datasets call it
    (it imports ``ray.data``, 0.5 s, so :func:`ensure_ray` does not). The refresh is a non-blocking call to the coordinator,
    which measured 0.1 CPU-s over a 7 s run at 0.1 s.

    A no-op (returns ``False``) when the attribute is missing or not a number, i.e. on a Ray version
    that changed it; remove this when Ray reads the first reservation synchronously.
    """
    try:
        from ray.data._internal.execution.resource_manager import ResourceManager
    except ImportError:
        return False
    current = getattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S", None)
    if not isinstance(current, int | float) or isinstance(current, bool):
        logger.debug("Ray Data has no numeric GLOBAL_LIMITS_UPDATE_INTERVAL_S; leaving it alone")
        return False
    if current > interval_s:
        ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S = interval_s  # type: ignore[assignment]  # Ray says int
    return True


def ensure_ray(num_cpus: int | None = None, *, tune_driver_slots: int = 4, dashboard: bool = True) -> None:
    """Connect to the cluster in ``RAY_ADDRESS`` (as set by ``ray job submit``) or start a local one.

    A local cluster gets ``max(4, os.cpu_count())`` logical CPUs unless ``num_cpus`` is given: on a
    2-core machine, Ray Data stages and 2 Train workers must fit at once (see docs/ray-notes, Data +
    Train deadlock). It also gets a custom ``tune_driver`` resource so Tune trial drivers never hold
    a CPU that their own Train workers need. The dashboard stays on: Train V2 needs it to clean up
    placement groups. ``dashboard=False`` is for the stand-alone data stages (``rvc-ray preprocess`` and
    ``rvc-ray index``, which never run Ray Train in their process): starting the dashboard costs
    1-2.5 s of a local cluster's start-up on 2 cores (docs/benchmarks.md).
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
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        logging_config=ray.LoggingConfig(log_level="WARNING"),
    )
