"""Planning stages against what a cluster has and can grow to; locations that cannot work on a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from rvc_ray.cluster import ClusterCapacity, plan_extraction, refuse_ephemeral_location
from rvc_ray.config import ConfigError, load_run_config
from rvc_ray.errors import InputError
from rvc_ray.layout import RunLayout
from rvc_ray.storage import StorageError

TWO_ONE_CPU_WORKERS = ClusterCapacity(({"CPU": 0.0, "memory": 8 * 2**30}, {"CPU": 1.0}, {"CPU": 1.0}))
ZERO_CPU_HEAD = ({"CPU": 0.0, "memory": 8 * 2**30},)
GPU_NODE_TYPE = ({"CPU": 8.0, "GPU": 1.0}, 4)  # cluster.yaml's GPU workers: min_workers 0, max_workers 4


def test_extraction_actors_shrink_to_leave_room_for_the_read_tasks_on_two_cpus() -> None:
    plan = plan_extraction(TWO_ONE_CPU_WORKERS, num_actors=1, cpus_per_actor=1.0, stages=2)
    # pitch + content actors + two 0.25-CPU feeding tasks fit in 2 CPUs; each actor fits on a 1-CPU node
    assert plan.cpus_per_actor == 0.75 and plan.cpus_per_task == 0.25
    assert 2 * plan.cpus_per_actor + 2 * plan.cpus_per_task <= TWO_ONE_CPU_WORKERS.cpus_now


def test_extraction_keeps_its_request_when_it_fits() -> None:
    roomy = ClusterCapacity(({"CPU": 8.0},))
    assert plan_extraction(roomy, num_actors=2, cpus_per_actor=1.5, stages=2).cpus_per_actor == 1.5


def test_fused_extraction_runs_one_actor_per_core_and_no_more_than_there_are_batches(monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    local = ClusterCapacity(({"CPU": 4.0},))  # ensure_ray's local cluster on 2 cores: 4 logical CPUs
    plan = plan_extraction(local, None, 1.0, stages=1)
    assert (plan.num_actors, plan.cpus_per_actor) == (2, 1.0)  # the cores, not the logical CPUs
    assert plan_extraction(local, None, 1.0, stages=1, max_actors=1).num_actors == 1  # one batch: one actor
    assert plan_extraction(local, None, 1.0, stages=2).num_actors == 1  # separate pools: one actor each
    assert plan_extraction(local, 3, 1.0, stages=1, max_actors=1).num_actors == 3  # the user's count stands

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a real cluster: its CPUs are what Ray says
    two_workers = plan_extraction(TWO_ONE_CPU_WORKERS, None, 1.0, stages=1)
    assert two_workers.num_actors == 2 and 2 * two_workers.cpus_per_actor + 2 * two_workers.cpus_per_task <= 2.0
    grown = plan_extraction(ClusterCapacity(ZERO_CPU_HEAD, (GPU_NODE_TYPE,)), None, 2.0, stages=1)
    assert grown.num_actors == 16  # what the autoscaler can add: 4 nodes x 8 CPUs at 2 CPUs an actor
    # the fused CPU default asks 2 CPUs an actor; on 1-CPU nodes each node gets a 1-CPU actor, not one node two
    small_nodes = plan_extraction(TWO_ONE_CPU_WORKERS, None, 2.0, stages=1)
    assert small_nodes.num_actors == 2 and small_nodes.cpus_per_actor <= 1.0


def test_zero_cpu_head_plans_against_the_autoscaler_node_types() -> None:
    head_only = ClusterCapacity(ZERO_CPU_HEAD, (GPU_NODE_TYPE,))
    assert head_only.cpus_now == 0 and head_only.cpus_max == 32
    assert plan_extraction(head_only, num_actors=2, cpus_per_actor=2.0, stages=2).cpus_per_actor == 2.0
    unbounded = ClusterCapacity(ZERO_CPU_HEAD, (({"CPU": 4.0}, -1),))
    assert unbounded.cpus_max == float("inf")


def test_a_stage_that_cannot_fit_even_after_growing_fails_with_one_line() -> None:
    with pytest.raises(InputError, match=r"has 0 CPUs and can grow to 0; lower features.num_actors"):
        plan_extraction(ClusterCapacity(ZERO_CPU_HEAD), num_actors=1, cpus_per_actor=1.0, stages=2)
    # an actor larger than any node type is capped to the largest node (8 CPUs), not left waiting forever
    capped = plan_extraction(ClusterCapacity(ZERO_CPU_HEAD, (GPU_NODE_TYPE,)), num_actors=1, cpus_per_actor=16, stages=2)
    assert capped.cpus_per_actor == 8.0


def test_preprocess_tasks_wait_for_an_autoscaler_node_on_a_zero_cpu_head(tiny_cfg) -> None:
    from rvc_ray.preprocess.pipeline import task_resources

    nodes = [{"Alive": True, "Resources": ZERO_CPU_HEAD[0]}]
    with pytest.raises(InputError, match=r"cpus_per_task=1.0 is more than the largest node has \(0 CPUs\)"):
        task_resources(tiny_cfg, nodes)
    # the autoscaler can add an 8-CPU node (which declares no memory): the request stands, Ray waits for it
    assert task_resources(tiny_cfg, nodes, [GPU_NODE_TYPE]) == {"num_cpus": 1.0, "memory": 2**30}
    with pytest.raises(InputError):
        task_resources(tiny_cfg, nodes, [({"CPU": 8.0}, 0)])  # a node group that may not grow adds nothing


def test_several_workers_sharing_gpus_under_nccl_are_refused_at_load() -> None:
    with pytest.raises(ConfigError, match=r"two ranks cannot share a GPU under NCCL"):
        load_run_config("tiny_cpu", ["scaling.use_gpu=true", "scaling.gpus_per_worker=0.5"])
    load_run_config("tiny_cpu", ["scaling.use_gpu=true", "scaling.gpus_per_worker=0.5", "scaling.backend=gloo"])
    load_run_config("tiny_cpu", ["scaling.use_gpu=true", "scaling.gpus_per_worker=0.5", "scaling.num_workers=1",
                                 "train.batch_size=4"])


def test_locations_are_resolved_once_at_load_and_uris_are_kept(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_run_config("tiny_cpu", ["experiment.work_dir=runs", "scaling.storage_path=ckpt"])
    assert cfg.experiment.work_dir == str(tmp_path / "runs") and cfg.scaling.storage_path == str(tmp_path / "ckpt")
    remote = load_run_config("tiny_cpu", ["experiment.work_dir=s3://bucket/runs/", "scaling.storage_path=gs://b/c"])
    assert (remote.experiment.work_dir, remote.scaling.storage_path) == ("s3://bucket/runs", "gs://b/c")
    layout = RunLayout.from_config(remote)
    assert layout.is_remote and layout.index_location == "s3://bucket/runs/demo/index/demo.index"
    assert layout.metrics_location == "s3://bucket/runs/demo/train/metrics.jsonl"
    with pytest.raises(StorageError, match="not a local path"):
        _ = layout.voices_dir
    assert load_run_config("tiny_cpu", ["experiment.work_dir=file:///data/x"]).experiment.work_dir == "/data/x"


def test_a_work_dir_inside_rays_job_copy_is_refused() -> None:
    job_copy = "/tmp/ray/session_2026/runtime_resources/working_dir_files/_ray_pkg_abc/runs/demo"
    with pytest.raises(StorageError, match=r"inside Ray's temporary copy of the job's working directory"):
        refuse_ephemeral_location(job_copy, "experiment.work_dir")
    refuse_ephemeral_location("/data/runs/demo", "experiment.work_dir")
    refuse_ephemeral_location("s3://bucket/runtime_resources/x", "experiment.work_dir")


def test_a_relative_work_dir_under_a_ray_job_is_refused_when_the_config_loads(tmp_path: Path, monkeypatch) -> None:
    job_copy = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc"
    job_copy.mkdir(parents=True)
    monkeypatch.chdir(job_copy)
    with pytest.raises(StorageError, match=r"experiment.work_dir resolves to .*_ray_pkg_abc/runs, inside Ray's"):
        load_run_config("tiny_cpu", ["experiment.work_dir=runs"])
    with pytest.raises(StorageError, match=r"scaling.storage_path resolves to"):
        load_run_config("tiny_cpu", ["experiment.work_dir=s3://bucket/runs", "scaling.storage_path=ckpt"])
    assert load_run_config("tiny_cpu", ["experiment.work_dir=s3://bucket/runs"]).experiment.work_dir == "s3://bucket/runs"


# the record Ray 2.60's autoscaler monitor wrote (`__autoscaling_status`) on a 0-CPU head started with an
# autoscaling config (tests/integration/test_cluster_autoscaler.py), trimmed to the keys read here
V1_STATUS = (
    '{"time": 1796071671.77, "monitor_pid": 31850, "autoscaler_report": {"active_nodes": {"ray.head.default": 1}, '
    '"idle_nodes": null, "pending_nodes": [], "pending_launches": {}, "failed_nodes": [], '
    '"node_type_mapping": {"ff00000": "ray.head.default"}, "legacy": true}, '
    '"load_metrics_report": {"usage": {"memory": [0.0, 20666073088.0]}, "resource_demand": []}}'
)
READONLY_STATUS = (
    '{"autoscaler_report": {"active_nodes": {"node_0d99d7": 1, "node_5841fe": 1}, "pending_nodes": [], '
    '"node_type_mapping": {"0d99d7": "node_0d99d7", "5841fe": "node_5841fe"}, "legacy": true}}'
)


def test_a_v1_autoscaler_that_publishes_no_node_types_counts_as_an_unknown_node_type(monkeypatch) -> None:
    from ray._private.state import state

    from rvc_ray import cluster
    from rvc_ray.cluster import UNKNOWN_NODE_TYPE, autoscaler_node_types, autoscaler_v1_running

    assert autoscaler_v1_running(V1_STATUS) and autoscaler_v1_running(V1_STATUS.encode())
    # a head started without an autoscaling config reports too, from Ray's read-only provider: one node type
    # per alive node, named after it (recorded on the multinode_cluster fixture's cluster)
    assert not autoscaler_v1_running(READONLY_STATUS)
    assert not autoscaler_v1_running('{"load_metrics_report": {}}') and not autoscaler_v1_running(None)
    assert not autoscaler_v1_running("not json")

    monkeypatch.setattr(state, "get_cluster_config", lambda: None)  # what Ray 2.60 returns under its v1 autoscaler
    monkeypatch.setattr(cluster, "_autoscaling_status", lambda: V1_STATUS.encode())
    assert autoscaler_node_types() == (UNKNOWN_NODE_TYPE,)
    head_only = ClusterCapacity(ZERO_CPU_HEAD, autoscaler_node_types())
    assert head_only.cpus_max == float("inf") and head_only.largest("CPU") == float("inf")
    # the actor pools hold their CPUs together: planned on one CPU, the smallest node it could add, while none
    # is alive, and on what is alive once a node is (such an autoscaler may be unable to add more)
    assert head_only.cpus_for_held_work == 1.0
    assert plan_extraction(head_only, num_actors=2, cpus_per_actor=2.0, stages=2).cpus_per_actor == 0.1
    one_node = ClusterCapacity((*ZERO_CPU_HEAD, {"CPU": 1.0}), autoscaler_node_types())
    assert one_node.cpus_for_held_work == 1.0
    assert plan_extraction(one_node, num_actors=1, cpus_per_actor=1.0, stages=2).cpus_per_actor == 0.25
    monkeypatch.setattr(cluster, "_autoscaling_status", lambda: None)
    assert autoscaler_node_types() == ()


def test_node_types_are_read_from_rays_cluster_config_message(monkeypatch) -> None:
    """The private API against the installed Ray's own protobuf (autoscaler v2 writes this message)."""
    from ray._private.state import state
    from ray.core.generated import autoscaler_pb2

    from rvc_ray.cluster import autoscaler_node_types

    config = autoscaler_pb2.ClusterConfig()
    group = config.node_group_configs.add()
    group.name, group.max_count = "gpu", 4
    group.resources["CPU"], group.resources["GPU"] = 8, 1
    monkeypatch.setattr(state, "get_cluster_config", lambda: config)
    assert autoscaler_node_types() == (({"CPU": 8.0, "GPU": 1.0}, 4),)


def test_a_refused_request_waits_for_the_monitors_first_report_before_it_is_refused(tiny_cfg, monkeypatch) -> None:
    """For its first seconds after the head starts, the monitor's record has no autoscaler report (it waits
    for the raylets' load reports): a 0-CPU head then looks like a cluster that can never run a task."""
    import ray
    from ray._private.state import state

    from rvc_ray import cluster
    from rvc_ray.cluster import UNKNOWN_NODE_TYPE, autoscaler_node_types, monitor_reported
    from rvc_ray.preprocess import pipeline

    before_first_update = '{"time": 1796071669.0, "monitor_pid": 31850, "load_metrics_report": {"usage": {}}}'
    assert not monitor_reported(before_first_update) and not monitor_reported(None)
    assert monitor_reported(V1_STATUS) and monitor_reported(READONLY_STATUS)

    monkeypatch.setattr(state, "get_cluster_config", lambda: None)
    records = iter([None, before_first_update, before_first_update, V1_STATUS])
    reads: list[bytes | None] = []

    def next_record() -> bytes | None:
        record = next(records, V1_STATUS)
        reads.append(record)
        return record.encode() if record else None

    monkeypatch.setattr(cluster, "_autoscaling_status", next_record)
    monkeypatch.setattr(cluster.time, "sleep", lambda _s: None)
    assert autoscaler_node_types() == ()  # no wait asked for: what is there now
    assert autoscaler_node_types(wait_s=60.0) == (UNKNOWN_NODE_TYPE,)
    assert reads == [None, before_first_update, before_first_update, V1_STATUS]

    # preprocessing on a 0-CPU head whose monitor has not reported yet: kept, once the report says an
    # autoscaler can add nodes (cluster_capacity waits while no CPU is alive)
    records = iter([before_first_update, V1_STATUS])
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": dict(ZERO_CPU_HEAD[0])}])
    assert pipeline._task_resources_on_cluster(tiny_cfg) == {"num_cpus": 1.0, "memory": 2**30}
    # a request too big for the alive nodes is read again once the monitor reports, then refused
    two_cpus = [{"Alive": True, "Resources": {"CPU": 2.0, "memory": 8 * 2**30}}]
    monkeypatch.setattr(ray, "nodes", lambda: two_cpus)
    records = iter([before_first_update, READONLY_STATUS])
    reads.clear()
    big = tiny_cfg.model_copy(update={"preprocess": tiny_cfg.preprocess.model_copy(update={"cpus_per_task": 4.0})})
    with pytest.raises(InputError, match="cpus_per_task=4.0 is more than the largest node has"):
        pipeline._task_resources_on_cluster(big)
    assert reads == [before_first_update, READONLY_STATUS]
