"""The single-worker GAN iteration: isolation, gradient health, determinism, guards, precision."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from rvc_ray.audio.spectral import compute_linear_spectrogram
from rvc_ray.config import load_run_config
from rvc_ray.data.batch import RVCBatch
from rvc_ray.model.build import build_discriminator, build_generator
from rvc_ray.train.steps import (
    BadBatchError,
    LearningRateTooLowError,
    NonFiniteLossError,
    StepSettings,
    ZeroGradientError,
    adversarial_terms,
    build_grad_scaler,
    build_optimizers,
    build_schedulers,
    d_step,
    g_step,
    generator_forward,
    train_step,
)

D_DIVISOR = 4  # RVC-width D is 22 M parameters even for the tiny preset; shrink it for speed


@pytest.fixture(scope="module")
def cfg():
    return load_run_config("tiny_cpu")


def make_batch(
    cfg, batch: int = 2, frames: int = 24, lengths: tuple[int, ...] | None = None, seed: int = 0
) -> RVCBatch:
    gen = torch.Generator().manual_seed(seed)
    a = cfg.audio
    lengths_t = torch.tensor(lengths or [frames] * batch)
    t = torch.arange(frames * a.hop_length) / a.sample_rate
    f0 = 120.0 + 60.0 * torch.rand(batch, 1, generator=gen)
    wav = 0.3 * torch.sin(2 * math.pi * f0 * t) + 0.01 * torch.randn(batch, t.numel(), generator=gen)
    f0_hz = f0.expand(batch, frames).clone()
    f0_hz[:, :3] = 0.0
    mel = 1127.0 * torch.log(1 + f0_hz / 700.0)
    lo, hi = 1127.0 * math.log(1 + 50 / 700), 1127.0 * math.log(1 + 1100 / 700)
    bins = torch.where(f0_hz > 0, torch.round((mel - lo) * 254 / (hi - lo) + 1), torch.ones_like(mel)).clamp(1, 255)
    spec = compute_linear_spectrogram(wav, a.n_fft, a.hop_length, a.win_length)
    return RVCBatch(
        content=torch.randn(batch, frames, cfg.model.content_dim, generator=gen),
        content_lengths=lengths_t,
        pitch_bins=bins.long(),
        f0_hz=f0_hz,
        spec=spec,
        spec_lengths=lengths_t.clone(),
        wav=wav[:, None],
        wav_lengths=lengths_t * a.hop_length,
        speaker_id=torch.arange(batch) % cfg.model.spk_embed_dim,
    )


def make_models(cfg, seed: int = 0):
    torch.manual_seed(seed)
    gen, disc = build_generator(cfg.model, cfg.audio), build_discriminator(cfg.model, channel_divisor=D_DIVISOR)
    opt_g, opt_d = build_optimizers(gen, disc, cfg.optim)
    return gen, disc, opt_g, opt_d


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same(module, snapshot) -> None:
    for k, v in module.state_dict().items():
        torch.testing.assert_close(v, snapshot[k], rtol=0, atol=0, msg=k)


def test_metric_keys_and_values(cfg) -> None:
    gen, disc, opt_g, opt_d = make_models(cfg)
    metrics = train_step(gen, disc, opt_g, opt_d, make_batch(cfg), StepSettings.from_config(cfg))
    expected = {"loss/d/total", "loss/g/total", "loss/g/adv", "loss/g/fm", "loss/g/mel", "loss/g/kl"}
    assert expected | {"grad_norm_d", "grad_norm_g", "skipped"} <= metrics.keys()
    assert all(math.isfinite(v) for v in metrics.values())
    loss = cfg.loss
    total = (
        loss.c_adv * metrics["loss/g/adv"]
        + loss.c_fm * metrics["loss/g/fm"]
        + loss.c_mel * metrics["loss/g/mel"]
        + loss.c_kl * metrics["loss/g/kl"]
    )
    assert math.isclose(metrics["loss/g/total"], total, rel_tol=1e-5)
    assert metrics["skipped"] == 0.0


def test_g_step_leaves_discriminator_untouched(cfg) -> None:
    gen, disc, opt_g, opt_d = make_models(cfg)
    settings = StepSettings.from_config(cfg)
    gpass = generator_forward(gen, make_batch(cfg), settings)
    before = _snapshot(disc)
    g_before = _snapshot(gen)
    g_step(adversarial_terms(disc, gpass, settings), opt_g, gpass, settings)
    _assert_same(disc, before)
    assert all(p.grad is None for p in disc.parameters())
    assert any(not torch.equal(v, g_before[k]) for k, v in gen.state_dict().items())


def test_d_step_leaves_generator_untouched(cfg) -> None:
    gen, disc, opt_g, opt_d = make_models(cfg)
    settings = StepSettings.from_config(cfg)
    gpass = generator_forward(gen, make_batch(cfg), settings)
    before = _snapshot(gen)
    d_before = _snapshot(disc)
    d_step(disc, opt_d, gpass, settings)
    _assert_same(gen, before)
    assert all(p.grad is None for p in gen.parameters())
    assert any(not torch.equal(v, d_before[k]) for k, v in disc.state_dict().items())


def test_every_parameter_gets_a_finite_nonzero_gradient(cfg) -> None:
    gen, disc, opt_g, opt_d = make_models(cfg)
    settings = StepSettings.from_config(cfg)
    batch = make_batch(cfg)
    # one step first: the flow's zero-initialised `post` layers block gradients into their WaveNets at init
    train_step(gen, disc, opt_g, opt_d, batch, settings)
    gpass = generator_forward(gen, batch, settings)
    d_step(disc, opt_d, gpass, settings)
    for name, p in disc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    g_step(adversarial_terms(disc, gpass, settings), opt_g, gpass, settings)
    for name, p in gen.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_same_seed_gives_identical_metrics(cfg) -> None:
    runs = []
    for _ in range(2):
        gen, disc, opt_g, opt_d = make_models(cfg, seed=3)
        torch.manual_seed(11)
        settings = StepSettings.from_config(cfg)
        runs.append(train_step(gen, disc, opt_g, opt_d, make_batch(cfg), settings))
    assert runs[0] == runs[1]


def test_bf16_autocast_runs_on_cpu(cfg) -> None:
    gen, disc, opt_g, opt_d = make_models(cfg)
    settings = dataclasses.replace(StepSettings.from_config(cfg), precision="bf16")
    metrics = train_step(gen, disc, opt_g, opt_d, make_batch(cfg), settings)
    assert all(math.isfinite(v) for v in metrics.values())


def test_fp16_needs_cuda(cfg) -> None:
    settings = dataclasses.replace(StepSettings.from_config(cfg), precision="fp16")
    with pytest.raises(ValueError, match="CUDA"):
        build_grad_scaler(settings)
    gen, disc, opt_g, opt_d = make_models(cfg)
    with pytest.raises(ValueError, match="fp16"):
        train_step(gen, disc, opt_g, opt_d, make_batch(cfg), settings)


def test_gradient_clipping_reports_the_unclipped_norm(cfg) -> None:
    gen, disc, opt_g, opt_d = make_models(cfg)
    settings = dataclasses.replace(StepSettings.from_config(cfg), grad_clip_norm=1e-3)
    metrics = train_step(gen, disc, opt_g, opt_d, make_batch(cfg), settings)
    assert metrics["grad_norm_g"] > 1e-3


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: dataclasses.replace(b, content_lengths=torch.tensor([24, 0])), "zero-length"),
        (lambda b: dataclasses.replace(b, content=b.content * torch.tensor([1.0, 0.0])[:, None, None]), "all-zero"),
        (
            lambda b: dataclasses.replace(
                b, content=b.content.masked_fill(torch.rand_like(b.content) < 0.01, float("nan"))
            ),
            "NaN",
        ),
        (lambda b: dataclasses.replace(b, spec=b.spec[:, :, :-2]), "aligned"),
    ],
)
def test_bad_batches_raise_or_skip(cfg, mutate, match) -> None:
    gen, disc, opt_g, opt_d = make_models(cfg)
    bad = mutate(make_batch(cfg))
    settings = StepSettings.from_config(cfg)
    with pytest.raises(BadBatchError, match=match):
        train_step(gen, disc, opt_g, opt_d, bad, settings)
    before = _snapshot(gen)
    skipped = train_step(gen, disc, opt_g, opt_d, bad, dataclasses.replace(settings, nonfinite_policy="skip"))
    assert skipped["skipped"] == 1.0
    _assert_same(gen, before)


def test_nonfinite_loss_raises_or_skips_without_updating(cfg) -> None:
    gen, disc, opt_g, opt_d = make_models(cfg)
    with torch.no_grad():
        gen.dec.conv_post.weight.fill_(float("nan"))
    settings = StepSettings.from_config(cfg)
    with pytest.raises(NonFiniteLossError, match="non-finite discriminator loss"):
        train_step(gen, disc, opt_g, opt_d, make_batch(cfg), settings)
    gen_before, disc_before = _snapshot(gen), _snapshot(disc)
    metrics = train_step(
        gen, disc, opt_g, opt_d, make_batch(cfg), dataclasses.replace(settings, nonfinite_policy="skip")
    )
    assert metrics["skipped"] == 1.0 and metrics["skipped/d"] == 1.0 and metrics["skipped/g"] == 1.0
    for k, v in disc.state_dict().items():
        torch.testing.assert_close(v, disc_before[k], rtol=0, atol=0, equal_nan=True)
    for k, v in gen.state_dict().items():
        torch.testing.assert_close(v, gen_before[k], rtol=0, atol=0, equal_nan=True)


def test_zero_gradient_norm_raises(cfg) -> None:
    gen, disc, opt_g, opt_d = make_models(cfg)
    zero_loss = cfg.loss.model_copy(update={"c_mel": 0.0, "c_kl": 0.0, "c_fm": 0.0, "c_adv": 0.0})
    settings = dataclasses.replace(StepSettings.from_config(cfg), loss=zero_loss)
    with pytest.raises(ZeroGradientError, match="generator gradient norm is exactly 0"):
        train_step(gen, disc, opt_g, opt_d, make_batch(cfg), settings)


def test_learning_rate_floor_raises(cfg) -> None:
    gen, disc, opt_g, opt_d = make_models(cfg)
    for group in opt_g.param_groups:
        group["lr"] = 1e-12
    settings = dataclasses.replace(StepSettings.from_config(cfg), min_learning_rate=1e-8)
    with pytest.raises(LearningRateTooLowError, match="generator learning rate"):
        train_step(gen, disc, opt_g, opt_d, make_batch(cfg), settings)


def test_optimizers_and_schedulers_follow_rvc(cfg) -> None:
    gen, disc, opt_g, opt_d = make_models(cfg)
    group = opt_g.param_groups[0]
    assert isinstance(opt_g, torch.optim.AdamW)
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (
        cfg.optim.lr_generator,
        cfg.optim.betas,
        cfg.optim.eps,
        cfg.optim.weight_decay,
    )
    sched_g, _ = build_schedulers(opt_g, opt_d, cfg.optim)
    opt_g.step()  # no gradients: a no-op that keeps the scheduler's call-order check quiet
    sched_g.step()
    assert math.isclose(opt_g.param_groups[0]["lr"], cfg.optim.lr_generator * cfg.optim.lr_decay, rel_tol=1e-12)
    gen, disc, opt_g, opt_d = make_models(cfg)
    build_schedulers(opt_g, opt_d, cfg.optim, last_epoch=9)  # resume: 10 epochs done
    assert math.isclose(opt_g.param_groups[0]["lr"], cfg.optim.lr_generator * cfg.optim.lr_decay**10, rel_tol=1e-12)


@pytest.mark.slow
def test_fifty_steps_on_one_batch_cut_the_mel_loss(cfg) -> None:
    torch.set_num_threads(2)
    gen, disc, opt_g, opt_d = make_models(cfg)
    batch = make_batch(cfg, batch=2, frames=cfg.model.segment_frames)  # window = whole clip: a fixed target
    settings = StepSettings.from_config(cfg)
    mels = [train_step(gen, disc, opt_g, opt_d, batch, settings)["loss/g/mel"] for _ in range(50)]
    first, last = sum(mels[:3]) / 3, sum(mels[-3:]) / 3
    assert last <= 0.7 * first, (first, last)


def _ddp_worker(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        cfg = load_run_config("tiny_cpu")
        gen, disc, opt_g, opt_d = make_models(cfg, seed=0)
        gen_ddp, disc_ddp = DDP(gen), DDP(disc)
        settings = StepSettings.from_config(cfg)
        torch.manual_seed(100 + rank)
        for step in range(2):
            metrics = train_step(gen_ddp, disc_ddp, opt_g, opt_d, make_batch(cfg, seed=10 * step + rank), settings)
            assert metrics["skipped"] == 0.0
            assert all(p.grad is None for p in disc.parameters())
        torch.save({"gen": gen.state_dict(), "disc": disc.state_dict()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_steps_work_under_ddp_and_keep_ranks_in_sync(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for part in ("gen", "disc"):
        for k, v in a[part].items():
            torch.testing.assert_close(v, b[part][k], rtol=0, atol=0, msg=f"{part}.{k}")


def test_a_scaler_skip_is_counted_not_raised_and_leaves_the_models_untouched(cfg) -> None:
    """fp16's GradScaler path (a CPU scaler drives the same code): Inf/NaN gradients make the scaler skip
    both updates and lower its scale; the step reports ``skipped`` and ``skipped/scaler`` instead of raising
    a health error (under policy "raise")."""
    gen, disc, opt_g, opt_d = make_models(cfg)
    with torch.no_grad():
        gen.dec.conv_post.weight.fill_(float("nan"))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    settings = StepSettings.from_config(cfg)
    assert settings.nonfinite_policy == "raise"
    gen_before, disc_before = _snapshot(gen), _snapshot(disc)
    metrics = train_step(gen, disc, opt_g, opt_d, make_batch(cfg), settings, scaler=scaler)
    assert metrics["skipped"] == 1.0 and metrics["skipped/scaler"] == 1.0
    assert not math.isfinite(metrics["grad_norm_d"]) and not math.isfinite(metrics["grad_norm_g"])
    assert scaler.get_scale() == 2.0**15
    for module, before in ((gen, gen_before), (disc, disc_before)):
        for k, v in module.state_dict().items():
            torch.testing.assert_close(v, before[k], rtol=0, atol=0, equal_nan=True)


def test_a_finite_step_with_a_scaler_updates_and_is_not_skipped(cfg) -> None:
    gen, disc, opt_g, opt_d = make_models(cfg)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    before = _snapshot(gen)
    metrics = train_step(gen, disc, opt_g, opt_d, make_batch(cfg), StepSettings.from_config(cfg), scaler=scaler)
    assert metrics["skipped"] == 0.0 and metrics["skipped/scaler"] == 0.0
    assert any(not torch.equal(v, before[k]) for k, v in gen.state_dict().items())


def test_precision_auto_is_fp32_on_cpu_and_explicit_choices_are_kept(cfg) -> None:
    from rvc_ray.train.steps import resolve_precision

    assert cfg.train.precision == "auto"
    assert StepSettings.from_config(cfg).precision == "fp32"
    assert [resolve_precision(p, "cpu") for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("fp8", "cpu")


def test_bf16_losses_are_computed_in_fp32(cfg) -> None:
    """Under bf16 autocast the forwards run in bf16, but the mels and every loss term are fp32."""
    from rvc_ray.losses import discriminator_loss
    from rvc_ray.train.steps import _fp32

    gen, disc, opt_g, opt_d = make_models(cfg)
    settings = dataclasses.replace(StepSettings.from_config(cfg), precision="bf16")
    gpass = generator_forward(gen, make_batch(cfg), settings)
    assert gpass.mel_fake.dtype == torch.float32 and gpass.mel_real.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        real, fake, _, _ = disc(gpass.wav_real, gpass.wav_fake.detach())
    assert {t.dtype for t in real} == {torch.bfloat16}
    assert discriminator_loss(_fp32(real), _fp32(fake)).dtype == torch.float32
