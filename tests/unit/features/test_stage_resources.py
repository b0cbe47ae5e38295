"""The resources and threads of the extraction actors come from config: GPU shares (fractions pack several
actors on a GPU), CPUs, and how an actor spends its CPUs (rows at once on CPU, torch threads on a GPU)."""

from __future__ import annotations

import threading
import time

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from rvc_ray.config import load_run_config
from rvc_ray.features.stages import RowThreads, actor_threads, stage_actor_resources


def test_cpu_actors_ask_for_no_gpu() -> None:
    features = load_run_config("tiny_cpu", ["features.pitch_gpus_per_actor=0.25"]).features
    assert features.fused_stages  # CPU: pitch and content in one actor by default, of 2 CPUs
    assert stage_actor_resources(features, "fused") == {"num_cpus": 2.0, "num_gpus": 0.0}
    separate = load_run_config("tiny_cpu", ["features.stages=separate"]).features
    assert stage_actor_resources(separate, "pitch") == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert stage_actor_resources(separate, "content") == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert actor_threads(features) == (2, 1) and actor_threads(separate) == (1, 1)
    chosen = load_run_config("tiny_cpu", ["features.cpus_per_actor=3"]).features
    assert stage_actor_resources(chosen, "fused")["num_cpus"] == 3.0 and actor_threads(chosen) == (3, 1)


def test_row_threads_run_rows_at_once_and_keep_their_order() -> None:
    threads_before = torch.get_num_threads()
    try:
        rows = RowThreads(load_run_config("tiny_cpu", ["features.cpus_per_actor=2"]).features)
        assert rows.rows_at_once == 2 and torch.get_num_threads() == 1  # each row's ops on one thread
        seen: set[str] = set()
        running, most = [0], [0]
        lock = threading.Lock()

        def slow_double(part: pa.Table) -> pa.Table:
            with lock:
                seen.add(threading.current_thread().name)
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.05)
            with lock:
                running[0] -= 1
            return pa.table({"x": pc.multiply(part.column("x"), 2)})

        out = rows.map(slow_double, pa.table({"x": list(range(7))}))
        assert out.column("x").to_pylist() == [0, 2, 4, 6, 8, 10, 12]
        assert most[0] == 2 and len(seen) == 2
        assert rows.map(slow_double, pa.table({"x": [5]})).column("x").to_pylist() == [10]

        gpu = RowThreads(load_run_config("tiny_cpu", ["features.use_gpu=true", "features.cpus_per_actor=2"]).features)
        assert gpu.rows_at_once == 1 and torch.get_num_threads() == 2  # one row at a time, CPUs as torch threads
        seen.clear()
        assert gpu.map(slow_double, pa.table({"x": [1, 2, 3]})).column("x").to_pylist() == [2, 4, 6]
        assert seen == {threading.current_thread().name}
    finally:
        torch.set_num_threads(threads_before)


def test_gpu_actors_ask_for_their_stage_share_or_the_common_one() -> None:
    base = ["features.use_gpu=true", "features.gpus_per_actor=0.5", "features.cpus_per_actor=2"]
    features = load_run_config("tiny_cpu", [*base, "features.pitch_gpus_per_actor=0.25"]).features
    assert stage_actor_resources(features, "pitch") == {"num_cpus": 2.0, "num_gpus": 0.25}
    assert stage_actor_resources(features, "content") == {"num_cpus": 2.0, "num_gpus": 0.5}
    assert stage_actor_resources(features, "fused") == {"num_cpus": 2.0, "num_gpus": 0.5}  # the larger share
    assert not features.fused_stages  # GPU: a pitch pool and a content pool unless asked
    assert load_run_config("tiny_cpu", [*base, "features.stages=fused"]).features.fused_stages
    with pytest.raises(ValueError, match="unknown extraction stage"):
        stage_actor_resources(features, "index")
