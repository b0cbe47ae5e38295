"""Connecting to (or starting) the Ray cluster a job runs on, and planning stages against what it has.

:func:`cluster_capacity` reads what the cluster has now (``ray.nodes()``) and what it can grow to: the
node types the autoscaler publishes in the GCS (its ``ClusterConfig``: each node group's resources and
``max_count``, written by the autoscaler of a ``ray up cluster.yaml`` cluster). A stage's request that
fits a node type the autoscaler can add is kept (Ray waits while the autoscaler adds the node); one that
fits neither the nodes nor any node type fails at once with a one-line :class:`~rvc_ray.errors.InputError`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rvc_ray.errors import InputError

__all__ = [
    "ClusterCapacity",
    "RAY_DATA_LIMITS_REFRESH_S",
    "StagePlan",
    "autoscaler_node_types",
    "cluster_capacity",
    "ensure_ray",
    "extraction_plan",
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


@dataclass(frozen=True)
class ClusterCapacity:
    """CPUs of the alive nodes, and the node types the autoscaler can still add.

    Attributes:
        node_resources: ``Resources`` of every alive node.
        node_types: ``(resources, max_count)`` of every autoscaler node group (``max_count`` -1: unbounded).
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
            cpus = float(resources.get("CPU", 0.0))
            if cpus and count < 0:
                return math.inf
            grown += cpus * max(count, 0)
        return max(self.cpus_now, grown)

    def largest(self, resource: str, *, unknown_in_types: float = 0.0) -> float:
        """The largest amount of ``resource`` on one node, alive or addable (``unknown_in_types`` when a
        node type does not say, as autoscaler node types usually leave ``memory`` out)."""
        alive = [float(r.get(resource, 0.0)) for r in self.node_resources]
        addable = [float(r.get(resource, unknown_in_types)) for r, count in self.node_types if count != 0]
        return max(alive + addable, default=0.0)


def cluster_capacity() -> ClusterCapacity:
    """What the connected cluster has and can grow to (see the module docstring)."""
    import ray

    nodes = tuple(dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive", True))
    return ClusterCapacity(nodes, autoscaler_node_types())


def autoscaler_node_types() -> tuple[tuple[Mapping[str, float], int], ...]:
    """The autoscaler's node groups from the GCS; empty without an autoscaler (or on a Ray that moved it)."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - a private Ray API: no autoscaler information is not an error
        logger.debug("no autoscaler cluster config readable", exc_info=True)
        return ()
    if config is None:
        return ()
    return tuple((dict(group.resources), int(group.max_count)) for group in config.node_group_configs)


def capacity_from_nodes(nodes: Sequence[Mapping[str, Any]]) -> ClusterCapacity:
    """A :class:`ClusterCapacity` from ``ray.nodes()`` rows (plus the autoscaler's node types when connected)."""
    import ray

    alive = tuple(dict(n.get("Resources", {})) for n in nodes if n.get("Alive", True))
    return ClusterCapacity(alive, autoscaler_node_types() if ray.is_initialized() else ())


@dataclass(frozen=True)
class StagePlan:
    """CPUs of each extraction actor and of each small Ray Data task (read, skip) that feeds them."""

    cpus_per_actor: float
    cpus_per_task: float


TASK_CPUS = 0.25  # a Parquet read or the skip-done filter: light work, never a whole CPU slot
MIN_ACTOR_CPUS = 0.1


def plan_extraction(capacity: ClusterCapacity, num_actors: int, cpus_per_actor: float, *, stages: int) -> StagePlan:
    """Fit ``stages`` actor pools of ``num_actors`` actors, plus two feeding tasks, into the cluster's CPUs.

    The pitch and content actors hold their CPUs for the whole stage, and Ray Data's read tasks need CPUs
    too: on a 2-CPU cluster, two 1-CPU actors leave the read waiting forever. When the actors (at
    ``features.cpus_per_actor``) and two tasks do not fit in what the cluster has or can grow to, each
    actor gets an equal share of what remains (CPUs are logical in Ray; the actor still runs).

    Raises:
        InputError: not even :data:`MIN_ACTOR_CPUS` per actor fits, or one actor fits on no node.
    """
    total = capacity.cpus_max
    actors = stages * num_actors
    needed = actors * cpus_per_actor + 2 * TASK_CPUS
    per_actor = cpus_per_actor
    if needed > total:
        per_actor = math.floor((total - 2 * TASK_CPUS) / actors * 20) / 20  # multiples of 0.05 CPU
        if per_actor < MIN_ACTOR_CPUS:
            raise InputError(
                f"feature extraction needs {actors} actors (features.num_actors={num_actors} x {stages} stages) plus "
                f"its read tasks, but the cluster has {capacity.cpus_now:g} CPUs and can grow to {total:g}; "
                "lower features.num_actors or add CPU nodes"
            )
        logger.warning(
            "extract: %d actors x features.cpus_per_actor=%g do not fit in %g CPUs; each actor reserves %g CPUs",
            actors,
            cpus_per_actor,
            total,
            per_actor,
        )
    largest = capacity.largest("CPU")
    if per_actor > largest:  # an actor runs on one node
        logger.warning("extract: an actor cannot hold %g CPUs; the largest node has %g", per_actor, largest)
        per_actor = largest
    return StagePlan(cpus_per_actor=per_actor, cpus_per_task=TASK_CPUS)


def extraction_plan(num_actors: int, cpus_per_actor: float, *, stages: int) -> StagePlan:
    """:func:`plan_extraction` on the connected cluster."""
    return plan_extraction(cluster_capacity(), num_actors, cpus_per_actor, stages=stages)


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


def _probe_on_node(location: str, token: str) -> str | None:
    """Ray task body: ``None`` when this node can use ``location`` (see :func:`check_location_on_cluster`)."""
    from rvc_ray import storage

    try:
        if storage.is_remote(location):
            storage.check_writable(location)
            return None
        probe = storage.join(location, f".rvc-ray-visible-{token}")
        if not storage.exists(probe) or storage.read_text(probe) != token:
            return "the folder is not there (a node-local path?)"
        return None
    except Exception as exc:  # noqa: BLE001 - reported as the node's one-line reason
        return " ".join(str(exc).split())[:300] or type(exc).__name__


PROBE_TIMEOUT_S = 120.0


def check_location_on_cluster(location: str, setting: str) -> None:
    """Prove that every alive node of the connected cluster can use ``location``, before any work starts.

    The driver first checks it can write there (a missing bucket, refused credentials or an endpoint that
    does not answer fail here, :func:`rvc_ray.storage.check_writable`). Then a 0-CPU task pinned to each
    other alive node checks the same from that node: for a URI it writes and deletes a probe object (a node
    without the ``AWS_*`` variables fails); for a local path it reads a probe file the driver wrote (a
    node-local disk fails). Nothing is left behind.

    Raises:
        StorageError: one line naming ``setting``, ``location``, the node and what to do.
    """
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from rvc_ray import storage

    refuse_ephemeral_location(location, setting)
    storage.check_writable(location)
    here = ray.get_runtime_context().get_node_id()
    others = [n for n in ray.nodes() if n.get("Alive", True) and n["NodeID"] != here]
    if not others:
        if not storage.is_remote(location) and autoscaler_node_types():
            logger.warning("%s=%s is a local path on an autoscaling cluster: it must be shared storage", setting, location)
        return
    token = uuid.uuid4().hex
    probe = storage.join(location, f".rvc-ray-visible-{token}")
    if not storage.is_remote(location):
        storage.write_text(probe, token)
    try:
        task = ray.remote(num_cpus=0, max_retries=0)(_probe_on_node)
        refs = {
            n["NodeManagerAddress"] + " (" + n["NodeID"][:8] + ")": task.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(location, token)
            for n in others
        }
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
        for node, ref in refs.items():
            reason = ray.get(ref) if ref in ready else f"no answer within {PROBE_TIMEOUT_S:.0f} s"
            if reason is not None:
                advice = (
                    "set AWS_ENDPOINT_URL/AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_DEFAULT_REGION in the "
                    "environment of `ray start` on every node"
                    if storage.is_remote(location)
                    else "use a folder every node mounts (NFS) or a URI such as s3://<bucket>/runs"
                )
                raise storage.StorageError(f"{setting}={location} cannot be used from node {node}: {reason}; {advice}")
    finally:
        if not storage.is_remote(location):
            storage.remove(probe)


def check_run_locations(experiment_root: str, storage_path: str | None) -> None:
    """:func:`check_location_on_cluster` for a run's ``experiment.work_dir`` and ``scaling.storage_path``."""
    check_location_on_cluster(experiment_root, "experiment.work_dir")
    if storage_path is not None:
        check_location_on_cluster(storage_path, "scaling.storage_path")
