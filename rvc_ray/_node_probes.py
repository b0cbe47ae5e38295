"""How :func:`rvc_ray.cluster.check_locations_on_cluster` checks a location from this process and from every
other node (a 0-CPU task pinned to each): the probes and what the nodes must see."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["outermost_missing", "probe_other_nodes", "remove_empty_folders", "seen_by_driver"]

logger = logging.getLogger("rvc_ray.cluster")

LISTING_NAMES = 32  # a local folder's view is its first names, sorted: enough to tell two disks apart


def _local_view(location: str) -> list[str] | int:
    """What is at a local ``location``: a folder's first :data:`LISTING_NAMES` names (without the probe files
    of checks running now), or a file's size."""
    if os.path.isdir(location):
        return sorted(n for n in os.listdir(location) if not n.startswith(".rvc-ray-"))[:LISTING_NAMES]
    return os.path.getsize(location)


def _probe_on_node(checks: Sequence[tuple[str, bool, object]]) -> list[str | None]:
    """Ray task body: for each ``(location, write, seen)``, ``None`` when this node sees ``location`` as the
    driver does, else the one-line reason. ``seen`` is the token of the driver's probe file (a local write)
    or :func:`_local_view` (a local read); a URI is written (write) or looked up (read) from here."""
    from rvc_ray import storage

    reasons: list[str | None] = []
    for location, write, seen in checks:
        try:
            if storage.is_remote(location):
                if write:
                    storage.check_writable(location)
                found = write or storage.exists(location) or storage.is_dir(location)
                reasons.append(None if found else "not found from this node")
            elif write:
                probe = storage.join(location, f".rvc-ray-visible-{seen}")
                visible = storage.exists(probe) and storage.read_text(probe) == seen
                reasons.append(None if visible else "the folder is not there (a node-local path?)")
            else:
                same = os.path.exists(location) and _local_view(location) == seen
                reasons.append(None if same else "not there, or holds other files (a node-local path?)")
        except Exception as exc:  # noqa: BLE001 - reported as the node's one-line reason
            reasons.append(" ".join(str(exc).split())[:300] or type(exc).__name__)
    return reasons


def seen_by_driver(location: str, setting: str, write: bool) -> object:
    """Check ``location`` from this process; returns what the nodes must see (see :func:`_probe_on_node`)."""
    import uuid

    from rvc_ray import storage
    from rvc_ray.cluster import refuse_ephemeral_location

    if write:
        refuse_ephemeral_location(location, setting)
        storage.check_writable(location)
        token = uuid.uuid4().hex
        if not storage.is_remote(location):
            storage.write_text(storage.join(location, f".rvc-ray-visible-{token}"), token)
        return token
    if not (storage.exists(location) or (storage.is_remote(location) and storage.is_dir(location))):
        advice = f"; {_REMOTE_ADVICE}" if storage.is_remote(location) else ""
        raise storage.StorageError(f"{setting} {location} does not exist{advice}")
    return None if storage.is_remote(location) else _local_view(location)


_REMOTE_ADVICE = (
    "check that the bucket exists and set AWS_ENDPOINT_URL/AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/"
    "AWS_DEFAULT_REGION in the environment of `ray start` on every node"
)
PROBE_TIMEOUT_S = 120.0


def probe_other_nodes(checks: Sequence[tuple[str, str, bool, object]]) -> None:
    """Run ``(setting, location, write, seen)`` checks in one 0-CPU task pinned to each other alive node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from rvc_ray import storage
    from rvc_ray.cluster import autoscaler_node_types

    here = ray.get_runtime_context().get_node_id()
    others = [n for n in ray.nodes() if n.get("Alive", True) and n["NodeID"] != here]
    if not others:
        for setting, location, _, _ in checks:
            if not storage.is_remote(location) and autoscaler_node_types():
                logger.warning(
                    "%s %s is a local path on an autoscaling cluster: it must be shared storage", setting, location
                )
        return
    task = ray.remote(num_cpus=0, max_retries=0)(_probe_on_node)
    jobs = [(location, write, seen) for _, location, write, seen in checks]
    refs = {
        f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})": task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(jobs)
        for n in others
    }
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
    for node, ref in refs.items():
        reasons = ray.get(ref) if ref in ready else [f"no answer within {PROBE_TIMEOUT_S:.0f} s"] * len(checks)
        for (setting, location, _, _), reason in zip(checks, reasons, strict=True):
            if reason is not None:
                advice = (
                    _REMOTE_ADVICE
                    if storage.is_remote(location)
                    else ("use a folder every node mounts (NFS) or a URI such as s3://<bucket>/runs")
                )
                raise storage.StorageError(f"{setting} {location} cannot be used from node {node}: {reason}; {advice}")


def outermost_missing(path: Path) -> list[Path]:
    """``[the outermost missing folder of path]``, or ``[]`` when ``path`` exists."""
    missing: list[Path] = []
    while not path.exists() and path != path.parent:
        missing, path = [path], path.parent
    return missing


def remove_empty_folders(folder: Path, top: Path) -> None:
    """Remove ``folder`` and its parents up to ``top`` while they are empty."""
    while True:
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == top:
            return
        folder = folder.parent
