"""GPU shares of the extraction actors come from config (fractions pack several actors on a GPU)."""

from __future__ import annotations

import pytest

from rvc_ray.config import load_run_config
from rvc_ray.features.stages import stage_actor_resources


def test_cpu_actors_ask_for_no_gpu() -> None:
    features = load_run_config("tiny_cpu", ["features.pitch_gpus_per_actor=0.25"]).features
    assert stage_actor_resources(features, "pitch") == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert stage_actor_resources(features, "content") == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert stage_actor_resources(features, "fused") == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert features.fused_stages  # CPU: pitch and content in one actor by default


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
