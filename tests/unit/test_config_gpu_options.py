"""Config options of the GPU path: precision, batch_size=auto, the GPU dataset cache, actor GPU shares."""

from __future__ import annotations

import pytest

from rvc_ray.config import ConfigError, RunConfig, load_run_config


def test_batch_size_auto_is_accepted_and_skips_the_divisibility_check() -> None:
    cfg = load_run_config("tiny_cpu", ["train.batch_size=auto", "scaling.num_workers=3", "tune.batch_sizes=[3]"])
    assert cfg.train.batch_size == "auto" and cfg.per_worker_batch_size is None
    assert (
        load_run_config(
            "tiny_cpu", ["train.batch_size=6", "scaling.num_workers=3", "tune.batch_sizes=[3]"]
        ).per_worker_batch_size
        == 2
    )


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.batch_size=big", "batch_size"),
        ("train.batch_size=0", "batch_size"),
        ("train.cache_dataset_on_gpu=true", "cache_dataset_on_gpu needs scaling.use_gpu"),
        ("train.precision=fp16", "fp16 needs GPUs"),
        ("features.pitch_gpus_per_actor=1.5", "pitch_gpus_per_actor"),
    ],
)
def test_gpu_options_are_refused_clearly(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_run_config("tiny_cpu", [override])


def test_gpu_options_on_a_gpu_config() -> None:
    cfg = load_run_config(
        "rvc_v2_40k",
        ["scaling.use_gpu=true", "train.cache_dataset_on_gpu=true", "train.precision=fp16", "train.batch_size=auto"],
    )
    assert isinstance(cfg, RunConfig) and cfg.train.cache_dataset_on_gpu and cfg.train.precision == "fp16"
