"""The resources and threads of the extraction actors come from config: GPU shares (fractions pack several
actors on a GPU), CPUs, and how an actor spends its CPUs (batches at once on CPU, torch threads on a GPU)."""

from __future__ import annotations

import os

import pytest
import torch

from rvc_ray.config import load_run_config
from rvc_ray.features.stages import ONEDNN_CACHE_VARIABLE, actor_threads, stage_actor_resources


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


def test_cpu_actors_run_batches_at_once_on_single_threaded_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    from rvc_ray.cluster import StagePlan
    from rvc_ray.features.extract import actor_pool, batches_per_actor
    from rvc_ray.features.stages import PitchStage

    features = load_run_config("tiny_cpu").features
    planned = StagePlan(num_actors=3, cpus_per_actor=2.0, cpus_per_task=0.25)
    assert batches_per_actor(features, planned) == 2
    pool = actor_pool(3, batches_per_actor(features, planned))
    assert (pool.min_size, pool.max_size) == (3, 3)
    assert pool.max_concurrent_calls_per_actor == 2 and pool.enable_true_multi_threading
    # shrunk beside the read tasks (1.5 CPUs) it still runs two; capped to a 1-CPU node, one
    assert batches_per_actor(features, StagePlan(num_actors=1, cpus_per_actor=1.5, cpus_per_task=0.25)) == 2
    assert batches_per_actor(features, StagePlan(num_actors=2, cpus_per_actor=1.0, cpus_per_task=0.25)) == 1
    gpu = load_run_config("tiny_cpu", ["features.use_gpu=true", "features.cpus_per_actor=2"]).features
    assert actor_threads(gpu) == (1, 2) and batches_per_actor(gpu, planned) == 1
    gpu_pool = actor_pool(1, 1)
    assert gpu_pool.max_concurrent_calls_per_actor == 1 and not gpu_pool.enable_true_multi_threading

    threads_before = torch.get_num_threads()
    monkeypatch.delenv(ONEDNN_CACHE_VARIABLE, raising=False)
    try:
        PitchStage(load_run_config("tiny_cpu", ["features.f0_method=fcpe"]).model_dump(mode="json"))
        assert torch.get_num_threads() == 1  # each of the two batches' ops on one thread
        assert os.environ[ONEDNN_CACHE_VARIABLE] == "0"  # no cache of primitives per segment length
        monkeypatch.setenv(ONEDNN_CACHE_VARIABLE, "16")
        PitchStage(load_run_config("tiny_cpu", ["features.f0_method=fcpe", "features.use_gpu=true",
                                                "features.cpus_per_actor=3"]).model_dump(mode="json"))  # fmt: skip
        assert torch.get_num_threads() == 3
        assert os.environ[ONEDNN_CACHE_VARIABLE] == "16"  # the environment's own setting wins
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
