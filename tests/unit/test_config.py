"""The typed run configuration: presets, job files, overrides and load-time validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rvc_ray.config import (
    PRESET_NAMES,
    ConfigError,
    RunConfig,
    apply_dotted_overrides,
    load_run_config,
    parse_override,
)

JOB_DIR = Path(__file__).resolve().parents[2] / "jobs" / "configs"


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_every_preset_loads_and_upsamples_to_the_hop(preset: str) -> None:
    cfg = load_run_config(preset)
    product = 1
    for rate in cfg.model.upsample_rates:
        product *= rate
    assert product == cfg.audio.hop_length == cfg.audio.sample_rate // 100


@pytest.mark.parametrize("job", sorted(JOB_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_job_file_loads(job: Path) -> None:
    assert isinstance(load_run_config(job), RunConfig)


def test_rvc_presets_match_the_reference_configs() -> None:
    expected = {  # docs/rvc-reference.md §4.3: (sr, n_fft, hop, n_mels, upsample, kernels, segment samples)
        "rvc_v2_32k": (32000, 1024, 320, 80, (10, 8, 2, 2), (20, 16, 4, 4), 12800),
        "rvc_v2_40k": (40000, 2048, 400, 125, (10, 10, 2, 2), (16, 16, 4, 4), 12800),
        "rvc_v2_48k": (48000, 2048, 480, 128, (12, 10, 2, 2), (24, 20, 4, 4), 17280),
    }
    for name, (sr, n_fft, hop, n_mels, ups, kernels, segment) in expected.items():
        cfg = load_run_config(name)
        assert (cfg.audio.sample_rate, cfg.audio.n_fft, cfg.audio.hop_length, cfg.audio.n_mels) == (sr, n_fft, hop, n_mels)
        assert cfg.model.upsample_rates == ups and cfg.model.upsample_kernel_sizes == kernels
        assert cfg.model.segment_frames * hop == segment
        assert cfg.model.content_dim == 768 and cfg.model.spk_embed_dim == 109 and cfg.model.gin_channels == 256
        assert cfg.model.discriminator_periods == (2, 3, 5, 7, 11, 17, 23, 37)
        assert (cfg.loss.c_mel, cfg.loss.c_kl, cfg.loss.c_adv) == (45.0, 1.0, 1.0)
        assert (cfg.optim.lr_generator, cfg.optim.betas, cfg.optim.eps, cfg.optim.lr_decay) == (
            1e-4, (0.8, 0.99), 1e-9, 0.999875)


def test_unknown_key_is_rejected_with_its_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'train\.batchsize'"):
        load_run_config("tiny_cpu", ["train.batchsize=8"])


def test_unknown_section_in_job_file_is_rejected(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("extends: tiny_cpu\ntrainer: {epochs: 3}\n")
    with pytest.raises(ConfigError, match="unknown key 'trainer'"):
        load_run_config(job)


def test_global_batch_that_does_not_divide_across_workers_fails_at_load_time() -> None:
    with pytest.raises(ConfigError, match=r"train\.batch_size=5 \(the global batch\) does not divide"):
        load_run_config("tiny_cpu", ["train.batch_size=5", "scaling.num_workers=2"])


def test_per_worker_batch_is_global_divided_by_workers() -> None:
    cfg = load_run_config("rvc_v2_40k", ["train.batch_size=16", "scaling.num_workers=4"])
    assert cfg.per_worker_batch_size == 4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.upsample_rates=[10,10,2]", "model.upsample_kernel_sizes=[16,16,4]"], "upsample one frame"),
        (["audio.hop_length=512"], "must be sample_rate/100"),
        (["preprocess.overlap_s=4.0"], "overlap_s"),
        (["train.precision=fp16"], "fp16 needs GPUs"),
        (["scaling.backend=nccl"], "nccl needs scaling.use_gpu"),
        (["features.f0_method=yin"], "f0_method"),
        (["model.segment_frames=500"], "longer than a preprocessed segment"),
        (["train.pretrained_generator=/x/f0G40k.pth"], "must be given together"),
        (["train.nonfinite_loss_policy=skip", "scaling.num_workers=2"], "skip needs scaling.num_workers=1"),
        (["model.discriminator_channel_divisor=4"], "tiny test models only"),
    ],
)
def test_cross_field_errors_are_readable(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_run_config("rvc_v2_40k", overrides)


def test_config_is_frozen_and_round_trips_through_json() -> None:
    cfg = load_run_config("tiny_cpu", ["loss.c_adv=0.5"])
    with pytest.raises(ValidationError, match="frozen"):
        cfg.loss.c_adv = 2.0  # type: ignore[misc]
    again = RunConfig.model_validate(cfg.model_dump(mode="json"))
    assert again == cfg and again.loss.c_adv == 0.5


def test_override_values_are_parsed_as_yaml() -> None:
    assert parse_override("model.discriminator_periods=[2, 3]") == (["model", "discriminator_periods"], [2, 3])
    assert parse_override("scaling.use_gpu=true") == (["scaling", "use_gpu"], True)
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("batch_size")
    with pytest.raises(ConfigError, match="name a section and a field"):
        parse_override("batch_size=8")


def test_dotted_overrides_set_nested_values_in_order() -> None:
    data: dict[str, object] = {"train": {"epochs": 3}, "loss": 0.5}
    apply_dotted_overrides(data, [("train.epochs", 7), (["optim", "lr_generator"], 1e-4), ("train.epochs", 9)])
    assert data == {"train": {"epochs": 9}, "optim": {"lr_generator": 1e-4}, "loss": 0.5}
    with pytest.raises(ConfigError, match="'loss' is not a section"):
        apply_dotted_overrides(data, [("loss.c_adv", 1.0)])
    with pytest.raises(ConfigError, match="'c_adv' is not a section"):
        load_run_config("tiny_cpu", ["loss.c_adv=2", "loss.c_adv.x=1"])


def test_tune_num_samples_below_one_is_refused_by_the_field() -> None:
    with pytest.raises(ConfigError, match="tune.num_samples"):
        load_run_config("tiny_cpu", ["tune.num_samples=0", "tune.max_concurrent_trials=1"])


def test_extends_resolves_relative_files_one_level(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("extends: tiny_cpu\ntrain: {epochs: 7}\n")
    (tmp_path / "job.yaml").write_text("extends: base.yaml\ntrain: {batch_size: 8}\n")
    with pytest.raises(ConfigError, match="one level"):
        load_run_config(tmp_path / "job.yaml")
    (tmp_path / "base2.yaml").write_text("train: {epochs: 7}\nscaling: {num_workers: 2}\n")
    (tmp_path / "job2.yaml").write_text("extends: base2.yaml\ntrain: {batch_size: 8}\n")
    cfg = load_run_config(tmp_path / "job2.yaml")
    assert (cfg.train.epochs, cfg.train.batch_size) == (7, 8)


def test_missing_job_file_and_unknown_preset_are_named() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config("nope/job.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
            handle.write("train: [unclosed\n")
        load_run_config(handle.name)
