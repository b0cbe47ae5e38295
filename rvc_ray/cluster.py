"""Connecting to (or starting) the Ray cluster a job runs on, and planning stages against what it has.

:func:`cluster_capacity` reads what the cluster has now (``ray.nodes()``) and what it can grow to: the
node types the autoscaler publishes in the GCS (its ``ClusterConfig``: each node group's resources and
``max_count``). Ray 2.60's autoscaler (v1, what ``ray up cluster.yaml`` runs) publishes no ``ClusterConfig``,
only its status record: then the cluster counts one node type of unknown size (:data:`UNKNOWN_NODE_TYPE`).
That record has no autoscaler report for the first seconds after the head starts (the monitor waits for
the raylets' first load report, then updates every 5 s): a reading that would refuse a request, one with
no CPU alive, waits for the first full report (:data:`MONITOR_FIRST_REPORT_WAIT_S`) before it answers.
A stage's request that fits a node type the autoscaler can add is kept (Ray waits while the autoscaler
adds the node); one that fits neither the nodes nor any node type fails at once with a one-line
:class:`~rvc_ray.errors.InputError`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rvc_ray.errors import InputError

__all__ = [
    "ClusterCapacity",
    "MONITOR_FIRST_REPORT_WAIT_S",
    "RAY_DATA_LIMITS_REFRESH_S",
    "StagePlan",
    "UNKNOWN_NODE_TYPE",
    "addable_node_types",
    "autoscaler_node_types",
    "autoscaler_v1_running",
    "check_location_on_cluster",
    "check_locations_on_cluster",
    "check_run_locations",
    "cores_for_cpu_bound_work",
    "cluster_capacity",
    "cluster_in_use",
    "ensure_ray",
    "extraction_plan",
    "monitor_reported",
    "plan_extraction",
    "shorten_ray_data_limits_refresh",
]

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
    2-core machine, Ray Data stages and 2 Train workers must fit at once (see docs/ray-pitfalls.md §1, Data +
    Train deadlock). It also gets a custom ``tune_driver`` resource so Tune trial drivers never hold
    a CPU that their own Train workers need. The dashboard stays on: Train V2 needs it to clean up
    placement groups. ``dashboard=False`` is for the stand-alone data stages (``rvc-ray preprocess``,
    ``extract`` and ``index``, which never run Ray Train in their process): starting the dashboard costs
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


@dataclass(frozen=True)
class ClusterCapacity:
    """CPUs of the alive nodes, and the node types the autoscaler can still add.

    Attributes:
        node_resources: ``Resources`` of every alive node.
        node_types: ``(resources, max_count)`` of every autoscaler node group (``max_count`` -1: unbounded;
            no resources at all: a node type of unknown size, :data:`UNKNOWN_NODE_TYPE`).
    """

    node_resources: tuple[Mapping[str, float], ...]
    node_types: tuple[tuple[Mapping[str, float], int], ...] = field(default_factory=tuple)

    @property
    def cpus_now(self) -> float:
        return sum(float(r.get("CPU", 0.0)) for r in self.node_resources)

    @property
    def cpus_max(self) -> float:
        """CPUs the cluster can reach: the alive nodes, or every node group at its ``max_count`` if more."""
        grown = 0.0
        for resources, count in self.node_types:
            cpus = float(resources.get("CPU", 0.0)) if resources else math.inf
            if cpus and count < 0:
                return math.inf
            grown += cpus * max(count, 0)
        return max(self.cpus_now, grown)

    @property
    def cpus_for_held_work(self) -> float:
        """CPUs a stage that holds all its CPUs at once (the extraction actor pools) may plan on.

        :attr:`cpus_max`, except under an autoscaler that does not say what it can add
        (:data:`UNKNOWN_NODE_TYPE`): it may be unable to add anything more, and actors that wait for CPUs
        that never come wait forever. Then what is alive, or one CPU (the smallest node it can add, which the
        request then waits for) while no node has a CPU.
        """
        if any(not resources for resources, count in self.node_types if count):
            return self.cpus_now if self.cpus_now > 0 else 1.0
        return self.cpus_max

    def largest(self, resource: str, *, unknown_in_types: float = 0.0) -> float:
        """The largest amount of ``resource`` on one node, alive or addable (``unknown_in_types`` when a
        node type does not say, as autoscaler node types usually leave ``memory`` out)."""
        alive = [float(r.get(resource, 0.0)) for r in self.node_resources]
        addable = [float(r.get(resource, unknown_in_types)) if r else math.inf for r, count in self.node_types if count]
        return max(alive + addable, default=0.0)


def cluster_capacity() -> ClusterCapacity:
    """What the connected cluster has and can grow to (see the module docstring). With no CPU alive (a
    0-CPU head), the autoscaler is waited for until its monitor has reported once."""
    import ray

    nodes = tuple(dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive", True))
    no_cpu_alive = not any(float(r.get("CPU", 0.0)) for r in nodes)
    return ClusterCapacity(nodes, autoscaler_node_types(wait_s=MONITOR_FIRST_REPORT_WAIT_S if no_cpu_alive else 0.0))


UNKNOWN_NODE_TYPE: tuple[Mapping[str, float], int] = ({}, -1)
"""An autoscaler runs but does not say what it can add: any request may fit, so none is refused."""
AUTOSCALING_STATUS_KEY = "__autoscaling_status"  # the monitor's record in the GCS (what `ray status` shows)
MONITOR_FIRST_REPORT_WAIT_S = 20.0
"""How long a reading that would refuse waits for the monitor's first report: it comes ~3-8 s after the head
starts (measured on Ray 2.60: the record after 2.7 s, its autoscaler report after 5.7 s)."""


def autoscaler_node_types(*, wait_s: float = 0.0) -> tuple[tuple[Mapping[str, float], int], ...]:
    """The autoscaler's node groups from the GCS: its ``ClusterConfig`` (Ray's autoscaler v2 writes it), or
    ``(UNKNOWN_NODE_TYPE,)`` when only the v1 autoscaler's status record is there (Ray 2.60's ``ray up``);
    empty without an autoscaler (or on a Ray that moved both).

    Args:
        wait_s: while neither is there yet, nor an autoscaler report in the status record (the monitor's
            first seconds), read again for up to this long before answering.
    """
    deadline = time.monotonic() + wait_s
    while True:
        config = _cluster_config()
        if config is not None and config.node_group_configs:
            return tuple((dict(group.resources), int(group.max_count)) for group in config.node_group_configs)
        status = _autoscaling_status()
        if monitor_reported(status) or time.monotonic() >= deadline:
            return (UNKNOWN_NODE_TYPE,) if autoscaler_v1_running(status) else ()
        time.sleep(0.5)


def _cluster_config() -> Any:
    try:
        from ray._private.state import state

        return state.get_cluster_config()
    except Exception:  # noqa: BLE001 - a private Ray API: no autoscaler information is not an error
        logger.debug("no autoscaler cluster config readable", exc_info=True)
        return None


def _autoscaling_status() -> bytes | None:
    try:
        from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

        return _internal_kv_get(AUTOSCALING_STATUS_KEY) if _internal_kv_initialized() else None
    except Exception:  # noqa: BLE001 - a private Ray API, as above
        logger.debug("no autoscaler status readable", exc_info=True)
        return None


def _autoscaler_report(status: bytes | str | None) -> object:
    try:
        record = json.loads(status) if status else None
    except (TypeError, ValueError):
        return None
    return record.get("autoscaler_report") if isinstance(record, dict) else None


def monitor_reported(status: bytes | str | None) -> bool:
    """Does the monitor's status record hold an autoscaler report? Not in its first rounds after the head
    starts (it waits for the raylets' load reports), so a record without one says nothing yet."""
    return isinstance(_autoscaler_report(status), dict)


def autoscaler_v1_running(status: bytes | str | None) -> bool:
    """Does the monitor's status record come from an autoscaler that can add nodes? The monitor runs on
    every head and always reports; on a head started without an autoscaling config its provider is Ray's
    read-only one, whose node types are the alive nodes themselves (``node_<node id>``, Ray's
    ``format_readonly_node_type``). Any other node type name comes from an autoscaling config."""
    report = _autoscaler_report(status)
    return isinstance(report, dict) and bool(addable_node_types(report))


def addable_node_types(report: Mapping[str, object]) -> set[str]:
    """The node type names of a v1 ``autoscaler_report`` that an autoscaling config defines: all of them but
    Ray's read-only provider's ``node_<node id>`` (see :func:`autoscaler_v1_running`)."""
    mapping, active = report.get("node_type_mapping"), report.get("active_nodes")
    mapping = mapping if isinstance(mapping, dict) else {}
    active = active if isinstance(active, dict) else {}
    names = {str(name) for name in mapping.values()} | {str(name) for name in active}
    return names - {f"node_{node_id}" for node_id in mapping}


@dataclass(frozen=True)
class StagePlan:
    """How many actors each extraction pool runs, the CPUs each reserves, and those of each small Ray Data
    task (read, skip) that feeds them."""

    num_actors: int
    cpus_per_actor: float
    cpus_per_task: float


TASK_CPUS = 0.25  # a Parquet read or the skip-done filter: light work, never a whole CPU slot
MIN_ACTOR_CPUS = 0.1


def cores_for_cpu_bound_work(cluster_cpus: float) -> float:
    """CPUs worth one CPU-bound worker each: ``cluster_cpus``, or at most this machine's cores on the local
    cluster :func:`ensure_ray` starts (no ``RAY_ADDRESS``), which declares more logical CPUs than the machine
    has cores; a worker per logical CPU there would only add processes (start-up, memory), not throughput."""
    if not os.environ.get("RAY_ADDRESS"):
        return min(cluster_cpus, float(os.cpu_count() or 1))
    return cluster_cpus


def plan_extraction(
    capacity: ClusterCapacity,
    num_actors: int | None,
    cpus_per_actor: float,
    *,
    stages: int,
    max_actors: int | None = None,
) -> StagePlan:
    """Fit ``stages`` actor pools, plus two feeding tasks, into the cluster's CPUs.

    ``num_actors`` actors per pool, or with ``None`` (``features.num_actors`` unset): one per pool when there
    are two pools, and for one fused pool as many as there are CPUs for them (at ``cpus_per_actor`` each, on
    the cores :func:`cores_for_cpu_bound_work` counts), at most ``max_actors`` (the batches there are). An
    actor holds at most the largest node's CPUs: on 1-CPU nodes a 2-CPU request becomes 1-CPU actors, one
    per node.

    The actors hold their CPUs for the whole stage, and Ray Data's read tasks need CPUs too: on a 2-CPU
    cluster, two 1-CPU actors leave the read waiting forever. When the actors (at
    ``features.actor_cpus``) and two tasks do not fit in what the cluster has or can grow to
    (:attr:`ClusterCapacity.cpus_for_held_work`), each actor gets an equal share of what remains (CPUs are
    logical in Ray; the actor still runs ``features.actor_cpus`` threads).

    Raises:
        InputError: not even :data:`MIN_ACTOR_CPUS` per actor fits, or one actor fits on no node.
    """
    total = capacity.cpus_for_held_work
    largest = capacity.largest("CPU")
    if 0 < largest < cpus_per_actor:  # an actor runs on one node: count the actors at what one can hold
        logger.warning("extract: an actor cannot hold %g CPUs; the largest node has %g", cpus_per_actor, largest)
        cpus_per_actor = largest
    if num_actors is None:
        num_actors = 1
        if stages == 1:
            cores = cores_for_cpu_bound_work(total if math.isfinite(total) else capacity.cpus_now)
            num_actors = max(1, int(cores // cpus_per_actor))
        if max_actors is not None:
            num_actors = max(1, min(num_actors, max_actors))
    actors = stages * num_actors
    needed = actors * cpus_per_actor + 2 * TASK_CPUS
    per_actor = cpus_per_actor
    if needed > total:
        per_actor = math.floor((total - 2 * TASK_CPUS) / actors * 20) / 20  # multiples of 0.05 CPU
        if per_actor < MIN_ACTOR_CPUS:
            raise InputError(
                f"feature extraction needs {actors} actors ({num_actors} per pool x {stages} pools) plus "
                f"its read tasks, but the cluster has {capacity.cpus_now:g} CPUs and can grow to {total:g}; "
                "lower features.num_actors or add CPU nodes"
            )
        logger.warning(
            "extract: %d actors x features.actor_cpus=%g do not fit in %g CPUs; each actor reserves %g CPUs",
            actors,
            cpus_per_actor,
            total,
            per_actor,
        )
    return StagePlan(num_actors=num_actors, cpus_per_actor=per_actor, cpus_per_task=TASK_CPUS)


def extraction_plan(
    num_actors: int | None, cpus_per_actor: float, *, stages: int, max_actors: int | None = None
) -> StagePlan:
    """:func:`plan_extraction` on the connected cluster."""
    return plan_extraction(cluster_capacity(), num_actors, cpus_per_actor, stages=stages, max_actors=max_actors)


# --------------------------------------------------------------------------- storage every node can use


def refuse_ephemeral_location(location: str, setting: str) -> None:
    """Refuse a local ``location`` inside Ray's per-job copy of ``--working-dir`` (Ray deletes it).

    Under ``ray job submit --working-dir .`` the job's directory is
    ``<ray temp>/session_*/runtime_resources/working_dir_files/_ray_pkg_*``: a relative ``experiment.work_dir``
    resolved there would put the voice where nobody finds it and Ray removes it.
    """
    from rvc_ray.storage import StorageError, is_remote

    if is_remote(location):
        return
    parts = location.split(os.sep)
    if "runtime_resources" in parts or any(p.startswith("_ray_pkg_") for p in parts):
        raise StorageError(
            f"{setting} resolves to {location}, inside Ray's temporary copy of the job's working directory, which "
            f"Ray deletes; give {setting} an absolute path on storage every node shares, or a URI "
            f"(--set {setting}=s3://<bucket>/runs)"
        )


def cluster_in_use() -> bool:
    """Is this process connected to a Ray cluster, or told to join one (``RAY_ADDRESS``)?"""
    if os.environ.get("RAY_ADDRESS"):
        return True
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def check_locations_on_cluster(
    *, reads: Sequence[tuple[str, str]] = (), writes: Sequence[tuple[str, str]] = ()
) -> None:
    """Prove that every alive node can read each ``(setting, location)`` of ``reads`` and write each of
    ``writes``, before a stage does any work.

    This process checks first: an input must exist (a missing bucket, refused credentials or an endpoint
    that does not answer fail here), an output must take a file (:func:`rvc_ray.storage.check_writable`).
    When this process is connected to a cluster (or ``RAY_ADDRESS`` names one: it connects), a 0-CPU task
    pinned to each other alive node checks the same from there: a URI is looked up (read) or written and
    deleted (write), so a node without the ``AWS_*`` variables fails; a local folder must hold the same
    names as here (read) or the probe file this process wrote (write), so a node-local disk fails. Inputs
    are checked on every node before any output is touched. Nothing is left behind.

    Raises:
        StorageError: one line naming the setting, the location, the node and what to do.
    """
    from rvc_ray import storage
    from rvc_ray._node_probes import outermost_missing, probe_other_nodes, remove_empty_folders, seen_by_driver

    for group, write in ((reads, False), (writes, True)):
        checks: list[tuple[str, str, bool, object]] = []
        created: list[tuple[Path, Path]] = []  # (local output, its outermost folder the check creates)
        try:
            for setting, location in group:
                if write and not storage.is_remote(location):
                    created.extend((Path(location), top) for top in outermost_missing(Path(location)))
                checks.append((setting, location, write, seen_by_driver(location, setting, write)))
            if checks and cluster_in_use():
                ensure_ray()
                probe_other_nodes(checks)
        finally:
            for _, location, _, seen in checks:
                if write and not storage.is_remote(location):
                    storage.remove(storage.join(location, f".rvc-ray-visible-{seen}"))
            for folder, top in created:  # the stage creates its outputs itself, when it runs
                remove_empty_folders(folder, top)


def check_location_on_cluster(location: str, setting: str) -> None:
    """:func:`check_locations_on_cluster` for one output ``location`` (``setting`` names it)."""
    check_locations_on_cluster(writes=[(setting, location)])


def check_run_locations(experiment_root: str, storage_path: str | None) -> None:
    """:func:`check_location_on_cluster` for a run's ``experiment.work_dir`` and ``scaling.storage_path``."""
    check_location_on_cluster(experiment_root, "experiment.work_dir")
    if storage_path is not None:
        check_location_on_cluster(storage_path, "scaling.storage_path")
