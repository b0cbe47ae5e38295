"""Ray's real autoscaler on one machine, for tests: the config of its fake multi-node provider, and that
provider taught to accept node types that declare ``memory`` (see :func:`fake_autoscaling_config`).

Used with ``tests.multinode.MultiNodeCluster(worker_cpus=(), autoscaling_config=fake_autoscaling_config(...))``.
"""

from __future__ import annotations

from typing import Any

from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider

__all__ = ["MemoryDeclaringFakeProvider", "fake_autoscaling_config"]


class MemoryDeclaringFakeProvider(FakeMultiNodeProvider):  # type: ignore[misc]
    """Ray's fake multi-node provider, for node types whose ``resources`` declare ``memory``.

    A cloud provider fills each node type's ``memory`` in from its instance type, and the autoscaler plans a
    task's ``memory`` request against it (a type without it never fits a task that asks for memory: the
    request stays infeasible). Ray's fake provider passes every declared resource to the node as a custom
    resource, which Ray refuses for ``memory``; this one leaves it out, and the node reports the memory it has.
    """

    def _create_node_with_resources_and_labels(
        self, node_config: dict[str, Any], tags: dict[str, str], count: int, resources: dict[str, Any], labels: Any
    ) -> None:
        resources = {key: value for key, value in resources.items() if key != "memory"}
        super()._create_node_with_resources_and_labels(node_config, tags, count, resources, labels)


def fake_autoscaling_config(worker_types: dict[str, dict[str, object]]) -> dict[str, object]:
    """An autoscaling config for Ray's fake multi-node provider (``MultiNodeCluster(autoscaling_config=...)``).

    The head runs Ray's real autoscaler (v1, the monitor ``ray up`` starts); its provider starts each node it
    adds as raylet processes on this machine, under the head's process group (so :meth:`MultiNodeCluster.shutdown`
    ends them). This is what Ray's ``cluster_utils.AutoscalingCluster`` writes, which this suite cannot use: its
    ``start()`` runs ``ray stop --force`` (every Ray cluster on the machine) and Ray 2.60's wheel lacks the
    ``example.yaml`` it reads. ``worker_types``: ``{name: {"resources": {...}, "min_workers": n,
    "max_workers": m}}``; the head type is ``ray.head.default``, 0 CPUs.
    """
    types = {name: {"node_config": {}, **spec} for name, spec in worker_types.items()}
    return {
        "cluster_name": "rvc-fake",
        "max_workers": sum(int(spec["max_workers"]) for spec in worker_types.values()),  # type: ignore[call-overload]
        "provider": {
            "type": "external",
            "module": f"{__name__}.MemoryDeclaringFakeProvider",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            **types,
        },
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        **{key: {} for key in ("auth", "docker", "file_mounts")},
        **{
            key: []
            for key in (
                "initialization_commands",
                "setup_commands",
                "head_setup_commands",
                "worker_setup_commands",
                "head_start_ray_commands",
                "worker_start_ray_commands",
                "cluster_synced_files",
                "rsync_exclude",
                "rsync_filter",
            )
        },
        "file_mounts_sync_continuously": False,
    }
