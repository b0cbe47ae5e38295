"""Training on a CUDA GPU: bf16/fp16 steps, the data path, a real out-of-memory, and a one-worker NCCL fit
with DDP forced on, so that every collective of the loop runs on NCCL."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from rvc_ray.config import load_run_config
from rvc_ray.model.build import build_discriminator, build_generator
from rvc_ray.train.steps import StepSettings, build_grad_scaler, build_optimizers, generator_forward, train_step
from tests.unit.train.test_steps import D_DIVISOR, make_batch

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cfg():
    return load_run_config("tiny_cpu", ["scaling.use_gpu=true", "scaling.num_workers=1"])


def _on(device, cfg, precision: str):
    torch.manual_seed(0)
    gen = build_generator(cfg.model, cfg.audio).to(device)
    disc = build_discriminator(cfg.model, channel_divisor=D_DIVISOR).to(device)
    opt_g, opt_d = build_optimizers(gen, disc, cfg.optim)
    settings = dataclasses.replace(StepSettings.from_config(cfg, device), precision=precision)
    return gen, disc, opt_g, opt_d, settings


def test_precision_auto_is_bf16_on_a_bf16_gpu(cfg, cuda) -> None:
    expected = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    assert StepSettings.from_config(cfg, cuda).precision == expected


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_steps_on_cuda_are_finite_with_fp32_mels(cfg, cuda, precision: str) -> None:
    gen, disc, opt_g, opt_d, settings = _on(cuda, cfg, precision)
    scaler = build_grad_scaler(settings)
    assert (scaler is not None) == (precision == "fp16")
    batch = make_batch(cfg, batch=4).to(cuda)
    gpass = generator_forward(gen, batch, settings)
    assert gpass.mel_fake.dtype == torch.float32 and gpass.mel_real.dtype == torch.float32
    for _ in range(3):
        metrics = train_step(gen, disc, opt_g, opt_d, batch, settings, scaler=scaler)
    assert all(math.isfinite(v) for k, v in metrics.items() if not k.startswith("grad_norm")), metrics


def test_an_fp16_overflow_is_skipped_by_the_scaler_not_raised(cfg, cuda) -> None:
    gen, disc, opt_g, opt_d, settings = _on(cuda, cfg, "fp16")
    scaler = build_grad_scaler(settings)
    with torch.no_grad():
        gen.dec.conv_post.weight.mul_(1e30)  # fp16 overflow in the forward
    before = {k: v.clone() for k, v in disc.state_dict().items()}
    scale = scaler.get_scale()
    metrics = train_step(gen, disc, opt_g, opt_d, make_batch(cfg, batch=4).to(cuda), settings, scaler=scaler)
    assert metrics["skipped"] == 1.0 and metrics["skipped/scaler"] == 1.0
    assert scaler.get_scale() < scale
    for k, v in disc.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, equal_nan=True)


def test_prefetcher_and_device_cache_deliver_the_same_batches_on_the_gpu(tmp_path: Path, cfg, cuda) -> None:
    from rvc_ray.data.dataset import TrainingItems, load_feature_table, write_synthetic_feature_table
    from rvc_ray.data.prefetch import BatchPrefetcher, DeviceItemCache

    write_synthetic_feature_table(
        tmp_path, content_dim=cfg.model.content_dim, sample_rate=cfg.audio.sample_rate, frames=[20, 31, 26, 24]
    )
    items = TrainingItems(load_feature_table(tmp_path, "train", hop_length=160), cfg.audio, max_frames=900)
    order = [[2, 0], [1, 3], [3, 2]]
    prefetcher = BatchPrefetcher(order, items.batch, cuda, depth=2)
    assert prefetcher.pin_memory
    cache = DeviceItemCache(items, cuda)
    for indices, batch in zip(order, prefetcher, strict=True):
        expected = items.batch(indices)
        for cached in (batch, cache.batch(indices)):
            assert cached.wav.device.type == "cuda"
            torch.testing.assert_close(cached.spec.cpu(), expected.spec, rtol=0, atol=0)
            torch.testing.assert_close(cached.content.cpu(), expected.content, rtol=0, atol=0)


def test_auto_batch_survives_a_real_cuda_out_of_memory(cuda) -> None:
    """Each 'clip' allocates 0.9/3.5 of the GPU: 3 fit under the search's memory cap, 4 raise a real
    torch.OutOfMemoryError, which the search recognises, cleans up and answers with 3."""
    from rvc_ray.train.memory import resolve_auto_batch_size

    total = torch.cuda.get_device_properties(cuda).total_memory
    per_clip = int(total * 0.9 / 3.5)

    def step(batch: int) -> None:
        block = torch.empty(batch * per_clip, dtype=torch.uint8, device=cuda)
        del block

    found = resolve_auto_batch_size(step, device=cuda, world_size=1, global_limit=64, min_across_workers=lambda v, d: v)
    assert found == 3
    torch.empty(int(total * 0.92), dtype=torch.uint8, device=cuda)  # the 90 % cap was lifted again


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_one_worker_nccl_fit_with_ddp_forced_on(gpu_ray_cluster: None, tmp_path: Path) -> None:
    """One GPU worker, NCCL, DDP forced on, auto precision and batch, clips cached on the GPU: every
    collective of the loop (auto batch, health flags, metrics, validation, early stop, barrier) and DDP's
    gradient all-reduce run on NCCL; the run trains, checkpoints and records what it ran with."""
    from rvc_ray.data.dataset import write_synthetic_feature_table
    from rvc_ray.train.launch import build_torch_trainer, train_result_from

    cfg = load_run_config(
        "tiny_cpu",
        [
            "scaling.use_gpu=true",
            "scaling.num_workers=1",
            "scaling.cpus_per_worker=1",
            "scaling.gpus_per_worker=1",
            "train.use_ddp_for_one_worker=true",
            "train.batch_size=auto",
            "train.auto_batch_size_max=4",
            "train.epochs=2",
            "train.save_every_epochs=1",
            "train.log_every_steps=1",
            "train.early_stop_patience=3",
            "train.cache_dataset_on_gpu=true",
        ],
    )
    features = tmp_path / "features"
    write_synthetic_feature_table(
        features,
        content_dim=cfg.model.content_dim,
        sample_rate=cfg.audio.sample_rate,
        frames=[32, 30, 34, 28, 30, 33, 31, 29, 30],
        splits=["train"] * 8 + ["val"],
    )
    storage = tmp_path / "train"
    trainer = build_torch_trainer(cfg, features, run_name="nccl", storage_path=storage)
    result = train_result_from(trainer.fit(), cfg, run_dir=storage / "nccl")
    assert result.epochs_completed == 2 and result.global_batch_size == 4
    records = [json.loads(line) for line in (storage / "nccl" / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in records if r["kind"] == "start")
    assert start["backend"] == "nccl" and start["ddp"] is True and start["device"].startswith("cuda")
    expected = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    assert start["precision"] == expected and start["batch_size_source"] == "auto"
    assert math.isfinite(result.metrics["val/mel_l1"]) and result.last_checkpoint is not None
