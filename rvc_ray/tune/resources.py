"""How many trials a sweep runs at once: what one trial holds, and whether the cluster can grow.

A trial holds its driver (one ``tune_driver`` slot, or 1 CPU without that resource) plus its Ray Train
workers. On a **fixed-size** cluster the sweep runs no more trials at once than fit in the resources free
when it starts (capped by ``tune.max_concurrent_trials``), so trial drivers never hold the CPUs their own
workers wait for. On a cluster that **can grow** (an autoscaler is running) the configured
``tune.max_concurrent_trials`` applies as given (all trials when unset): the pending trials are what makes
the autoscaler add nodes, so cutting concurrency to the resources free at start would leave it idle.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rvc_ray.config import RunConfig

__all__ = [
    "TUNE_DRIVER_RESOURCE",
    "ClusterGrowth",
    "ConcurrencyPlan",
    "TrialDemand",
    "detect_cluster_growth",
    "growth_from_autoscaler_status",
    "plan_concurrency",
    "trial_demand",
]

TUNE_DRIVER_RESOURCE = "tune_driver"
_AUTOSCALING_STATUS_KEY = "__autoscaling_status"  # what the autoscaler monitor writes to the GCS (``ray status``)


@dataclass(frozen=True)
class TrialDemand:
    """Resources one trial holds: its driver (a ``tune_driver`` slot, or 1 CPU) plus its Train workers."""

    driver: dict[str, float]
    workers: dict[str, float]

    @property
    def total(self) -> dict[str, float]:
        merged = dict(self.workers)
        for key, value in self.driver.items():
            merged[key] = merged.get(key, 0.0) + value
        return merged


def trial_demand(configs: Sequence[RunConfig], *, has_driver_resource: bool) -> TrialDemand:
    """The largest per-trial demand over ``configs`` (the scaling section may itself be searched)."""
    cpus = max(c.scaling.num_workers * c.scaling.cpus_per_worker for c in configs)
    gpus = max(c.scaling.num_workers * c.scaling.gpus_per_worker if c.scaling.use_gpu else 0.0 for c in configs)
    workers = {"CPU": cpus, **({"GPU": gpus} if gpus > 0 else {})}
    driver = {TUNE_DRIVER_RESOURCE: 1.0} if has_driver_resource else {"CPU": 1.0}
    return TrialDemand(driver=driver, workers=workers)


@dataclass(frozen=True)
class ClusterGrowth:
    """Whether the cluster can add nodes, and how that was found out (for the log line)."""

    can_grow: bool
    reason: str


def growth_from_autoscaler_status(
    status: bytes | str | None,
    *,
    autoscaler_v2: bool = False,
    node_types: Sequence[tuple[Mapping[str, float], int]] = (),
) -> ClusterGrowth:
    """Whether an autoscaler can add nodes, from what it publishes in the GCS.

    Args:
        status: the autoscaler monitor's status record (``__autoscaling_status``, what ``ray status`` shows).
            The monitor runs and reports on every head; on a head started without an autoscaling config its
            node types are Ray's read-only ones, the alive nodes themselves
            (:func:`rvc_ray.cluster.autoscaler_v1_running`), and it cannot add any.
        autoscaler_v2: autoscaler v2 (KubeRay) is enabled; it only runs with an autoscaler.
        node_types: the autoscaler's node groups ``(resources, max_count)`` from the GCS cluster config
            (:func:`rvc_ray.cluster.autoscaler_node_types`); ``max_count`` -1 = unbounded.
    """
    growing = [(dict(resources), count) for resources, count in node_types if count != 0 and resources]
    if growing:
        described = ", ".join(
            f"{_format_resources(resources)} x {'unbounded' if count < 0 else count}" for resources, count in growing
        )
        return ClusterGrowth(True, f"the autoscaler's node types: {described}")
    if autoscaler_v2:
        return ClusterGrowth(True, "autoscaler v2 is enabled on this cluster")
    if not status:
        return ClusterGrowth(False, "no autoscaler (the GCS holds no autoscaler status)")
    try:
        record = json.loads(status)
    except (TypeError, ValueError):
        return ClusterGrowth(False, "no autoscaler (unreadable autoscaler status)")
    report = record.get("autoscaler_report") if isinstance(record, dict) else None
    if not isinstance(report, dict):
        return ClusterGrowth(False, "no autoscaler (the head was started without an autoscaling config)")
    from rvc_ray.cluster import addable_node_types

    names = sorted(addable_node_types(report))
    if not names:
        return ClusterGrowth(False, "no autoscaler (the head was started without an autoscaling config: Ray's read-only provider)")
    return ClusterGrowth(True, f"an autoscaler is running (node types now: {', '.join(names)})")


def detect_cluster_growth() -> ClusterGrowth:
    """:func:`growth_from_autoscaler_status` for the connected cluster (``ray.init`` must have run)."""
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

    from rvc_ray.cluster import autoscaler_node_types

    autoscaler_v2 = False
    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        autoscaler_v2 = bool(is_autoscaler_v2(fetch_from_server=True))
    except Exception:  # noqa: BLE001 - an older or partial GCS: treat as v1
        autoscaler_v2 = False
    status = _internal_kv_get(_AUTOSCALING_STATUS_KEY) if _internal_kv_initialized() else None
    return growth_from_autoscaler_status(status, autoscaler_v2=autoscaler_v2, node_types=autoscaler_node_types())


@dataclass(frozen=True)
class ConcurrencyPlan:
    """``trials`` at once, and one sentence saying which rule gave that number."""

    trials: int
    reason: str


def _format_resources(resources: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{key}: {value:g}" for key, value in sorted(resources.items())) + "}"


def plan_concurrency(
    demand: TrialDemand,
    available: Mapping[str, float],
    configured: int | None,
    *,
    growth: ClusterGrowth,
    num_trials: int,
) -> ConcurrencyPlan:
    """How many trials may run at once (at least 1).

    Args:
        demand: what one trial holds (:func:`trial_demand`).
        available: the cluster's free resources now (``ray.available_resources()``).
        configured: ``tune.max_concurrent_trials`` (None = no cap of its own).
        growth: whether the cluster can add nodes (:func:`detect_cluster_growth`).
        num_trials: trials in the sweep (``num_samples`` x grid points), the cap when nothing else applies.
    """
    setting = f"tune.max_concurrent_trials={configured if configured is not None else 'unset'}"
    if growth.can_grow:
        trials = max(1, configured if configured is not None else num_trials)
        return ConcurrencyPlan(
            trials,
            f"the cluster can grow ({growth.reason}): {setting} applies as configured, not cut to the "
            f"resources free now {_format_resources(available)}",
        )
    fits = math.inf
    for key, needed in demand.total.items():
        if needed > 0:
            fits = min(fits, math.floor(available.get(key, 0.0) / needed + 1e-9))
    limit = min(fits, configured if configured is not None else math.inf, num_trials)
    trials = max(1, int(limit)) if math.isfinite(limit) else max(1, num_trials)
    fitting = f"{int(fits)} trial(s)" if math.isfinite(fits) else "any number of trials"
    return ConcurrencyPlan(
        trials,
        f"fixed-size cluster ({growth.reason}): {fitting} fit in the free resources {_format_resources(available)} "
        f"at {_format_resources(demand.total)} each; {setting}",
    )

