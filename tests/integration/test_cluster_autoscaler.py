"""rvc-ray on a 0-CPU head with Ray's real autoscaler (fake multi-node provider: the nodes it adds are raylets
on this machine): preprocessing waits for the autoscaler to add a CPU worker instead of refusing,
and extraction then plans and runs its actors on that cluster.

The head runs the autoscaler of Ray 2.60 (v1, as ``ray up cluster.yaml`` does), which publishes no node
types in the GCS, only its status record: the stage counts a node type of unknown size
(``rvc_ray.cluster.UNKNOWN_NODE_TYPE``) and keeps its 1-CPU request.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(420)
def test_preprocess_and_extract_on_a_zero_cpu_head_wait_for_the_autoscaler_to_add_a_cpu_node(tmp_path: Path) -> None:
    from rvc_ray.demo_corpus import generate_demo_corpus
    from tests.fake_autoscaler import fake_autoscaling_config
    from tests.multinode import MultiNodeCluster

    corpus = tmp_path / "corpus"
    generate_demo_corpus(corpus, num_speakers=2, seconds_per_speaker=4.0, seed=0)
    workers = {"cpu_worker": {"resources": {"CPU": 1, "memory": 4 * 2**30}, "min_workers": 0, "max_workers": 1}}
    with MultiNodeCluster(worker_cpus=(), autoscaling_config=fake_autoscaling_config(workers)) as cluster:
        before = cluster.alive_nodes()
        assert len(before) == 1 and float(before[0]["resources_total"].get("CPU", 0.0)) == 0.0

        def rvc_ray(*args: str) -> None:
            done = subprocess.run(
                [str(Path(sys.executable).with_name("rvc-ray")), *args, "-c", "tiny_cpu",
                 "-s", f"experiment.work_dir={tmp_path / 'runs'}"],
                capture_output=True, text=True, timeout=240, cwd=tmp_path,
                env={**cluster._environment(), "PYTHONPATH": str(REPO)},
            )  # fmt: skip
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

        rvc_ray("preprocess", "-i", str(corpus))
        after = cluster.alive_nodes()
        # extraction plans its two actor pools against the same 0-CPU head + autoscaler (not refused for 0 CPUs)
        rvc_ray("extract")

    manifest = json.loads((tmp_path / "runs" / "demo" / "dataset" / "manifest.json").read_text())
    assert manifest["engine"] == "ray" and manifest["counts"]["num_input_files"] == 2
    assert manifest["counts"]["num_segments"] > 0
    # the segments were cut on the node the autoscaler added: the head has no CPU for a task
    added = [n for n in after if n["node_id"] != before[0]["node_id"]]
    assert len(added) == 1 and float(added[0]["resources_total"]["CPU"]) == 1.0
    features = json.loads((tmp_path / "runs" / "demo" / "features" / "manifest.json").read_text())
    assert features["status"] == "complete" and features["failures"] == []
    assert features["counts"]["rows"] - features["counts"]["mute"] == manifest["counts"]["num_segments"]
