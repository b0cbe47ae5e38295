"""The multi-node cluster fixture itself: a 0-CPU head and two 1-CPU worker raylets, each its own node."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_multinode_cluster_has_a_zero_cpu_head_and_two_one_cpu_workers(multinode_cluster) -> None:
    """Checked through the state API over HTTP: this process never joins the cluster as a driver (the suite's
    ``ray_cluster`` fixture may already have started a local Ray in it)."""
    nodes = multinode_cluster.alive_nodes()
    cpus = sorted(float(n["resources_total"].get("CPU", 0.0)) for n in nodes)
    assert cpus == [0.0, 1.0, 1.0]
    assert {"w0", "w1"} <= {key for n in nodes for key in n["resources_total"]}
    assert len({n["node_id"] for n in nodes}) == 3 and all(n["state"] == "ALIVE" for n in nodes)
