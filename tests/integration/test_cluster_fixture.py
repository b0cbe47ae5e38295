"""The multi-node cluster fixture itself: a 0-CPU head and two 1-CPU worker raylets, tasks on both workers."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_multinode_cluster_has_a_zero_cpu_head_and_two_one_cpu_workers(multinode_cluster) -> None:
    import ray

    nodes = multinode_cluster.alive_nodes()
    cpus = sorted(float(n["resources_total"].get("CPU", 0.0)) for n in nodes)
    assert cpus == [0.0, 1.0, 1.0]
    assert {"w0", "w1"} <= {key for n in nodes for key in n["resources_total"]}

    ray.init(address=multinode_cluster.gcs_address, logging_config=ray.LoggingConfig(log_level="WARNING"))
    try:

        @ray.remote(num_cpus=1)
        def where() -> str:
            return ray.get_runtime_context().get_node_id()

        node_ids = set(ray.get([where.options(resources={label: 1}).remote() for label in ("w0", "w1")]))
        worker_ids = {n["node_id"] for n in nodes if "head" not in n["resources_total"]}
        assert node_ids == worker_ids and len(node_ids) == 2
    finally:
        ray.shutdown()
