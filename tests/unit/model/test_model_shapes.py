"""Shapes and contracts of the tiny generator / discriminator (CPU, fast)."""

from __future__ import annotations

import time

import pytest
import torch

from rvc_ray.config import load_run_config
from rvc_ray.model.build import build_discriminator, build_generator
from rvc_ray.model.layers import rand_slice_segments, slice_segments


@pytest.fixture(scope="module")
def cfg():
    return load_run_config("tiny_cpu")


def _inputs(cfg, batch=2, frames=40, lengths=(40, 30)):
    c = cfg.model.content_dim
    return dict(
        content=torch.randn(batch, frames, c),
        content_lengths=torch.tensor(lengths),
        pitch_bins=torch.randint(1, 256, (batch, frames)),
        f0_hz=torch.rand(batch, frames) * 200 + 100,
        speaker_id=torch.tensor([0, 1]),
    )


def test_tiny_models_build_fast(cfg) -> None:
    build_generator(cfg.model, cfg.audio)  # warm imports
    started = time.perf_counter()
    build_generator(cfg.model, cfg.audio)
    build_discriminator(cfg.model, channel_divisor=16)
    # ~0.05 s on a quiet machine; the loose bound absorbs a loaded CI box. The RVC-width D (22 M parameters
    # even with 2 periods) alone takes ~0.3-0.7 s, hence the divisor for tests.
    assert time.perf_counter() - started < 1.0


def test_discriminator_channel_divisor_keeps_the_output_structure(cfg) -> None:
    small = build_discriminator(cfg.model, channel_divisor=16)
    assert sum(p.numel() for p in small.parameters()) < 200_000
    with pytest.raises(ValueError, match="channel_divisor"):
        build_discriminator(cfg.model, channel_divisor=3)


def test_training_forward_shapes(cfg) -> None:
    gen = build_generator(cfg.model, cfg.audio)
    x = _inputs(cfg)
    spec = torch.rand(2, cfg.audio.spec_channels, 40)
    out = gen(
        x["content"], x["content_lengths"], x["pitch_bins"], x["f0_hz"], spec, x["content_lengths"], x["speaker_id"]
    )
    seg = cfg.model.segment_frames
    assert gen.hop_length == cfg.audio.hop_length and gen.segment_frames == seg and gen.use_f0
    assert out.wav.shape == (2, 1, seg * cfg.audio.hop_length)
    assert out.slice_starts.dtype == torch.long and out.slice_starts.shape == (2,)
    assert all(0 <= int(s) <= int(n) - seg for s, n in zip(out.slice_starts, x["content_lengths"], strict=True))
    for t in (out.z_p, out.logs_q, out.m_p, out.logs_p):
        assert t.shape == (2, cfg.model.inter_channels, 40)
    assert out.z_mask.shape == (2, 1, 40)
    assert float(out.wav.detach().abs().max()) <= 1.0


def test_infer_shape_and_seeded_determinism(cfg) -> None:
    gen = build_generator(cfg.model, cfg.audio).eval()
    x = _inputs(cfg)
    a = gen.infer(**x, generator=torch.Generator().manual_seed(7))
    b = gen.infer(**x, generator=torch.Generator().manual_seed(7))
    assert a.shape == (2, 1, 40 * cfg.audio.hop_length)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.isfinite(a).all()


def test_no_f0_variant_is_plain_hifigan(cfg) -> None:
    model = cfg.model.model_copy(update={"use_f0": False})
    gen = build_generator(model, cfg.audio)
    keys = gen.state_dict().keys()
    assert not any(k.startswith(("enc_p.emb_pitch", "dec.m_source", "dec.noise_convs")) for k in keys)
    x = _inputs(cfg)
    out = gen.infer(x["content"], x["content_lengths"], None, None, x["speaker_id"])
    assert out.shape == (2, 1, 40 * cfg.audio.hop_length)


def test_f0_generator_requires_pitch(cfg) -> None:
    gen = build_generator(cfg.model, cfg.audio)
    x = _inputs(cfg)
    with pytest.raises(ValueError, match="pitch_bins is None"):
        gen.infer(x["content"], x["content_lengths"], None, x["f0_hz"], x["speaker_id"])


def test_speaker_out_of_range_is_named(cfg) -> None:
    gen = build_generator(cfg.model, cfg.audio)
    x = _inputs(cfg)
    x["speaker_id"] = torch.tensor([0, cfg.model.spk_embed_dim])
    with pytest.raises(ValueError, match="speaker_id"):
        gen.infer(**x)


def test_discriminator_outputs_one_entry_per_sub_discriminator(cfg) -> None:
    disc = build_discriminator(cfg.model)
    real, fake = torch.randn(2, 1, 2560), torch.randn(2, 1, 2560)
    real_logits, fake_logits, real_fmaps, fake_fmaps = disc(real, fake)
    n = len(cfg.model.discriminator_periods) + 1
    assert len(real_logits) == len(fake_logits) == len(real_fmaps) == len(fake_fmaps) == n
    assert [len(f) for f in real_fmaps] == [7] + [6] * (n - 1)
    assert all(r.shape == f.shape and r.shape[0] == 2 for r, f in zip(real_logits, fake_logits, strict=True))


def test_random_slices_are_aligned_between_frames_and_samples() -> None:
    hop, frames, seg = 4, 20, 5
    frame_ids = torch.arange(frames, dtype=torch.float32).repeat(3, 1)[:, None]  # [B, 1, F]
    wav = torch.arange(frames * hop, dtype=torch.float32).repeat(3, 1)[:, None]  # [B, 1, T]
    lengths = torch.tensor([20, 12, 5])
    sliced, starts = rand_slice_segments(frame_ids, lengths, seg, generator=torch.Generator().manual_seed(0))
    wav_slice = slice_segments(wav, starts * hop, seg * hop)
    for b in range(3):
        assert 0 <= int(starts[b]) <= int(lengths[b]) - seg
        assert torch.equal(wav_slice[b, 0, ::hop] // hop, sliced[b, 0])


def test_slice_of_too_short_item_is_zero_padded() -> None:
    x = torch.ones(1, 2, 3)
    sliced, starts = rand_slice_segments(x, torch.tensor([3]), 5)
    assert int(starts[0]) == 0 and sliced.shape == (1, 2, 5)
    assert torch.equal(sliced[0, :, 3:], torch.zeros(2, 2))


def test_misaligned_pitch_is_named(cfg) -> None:
    gen = build_generator(cfg.model, cfg.audio)
    x = _inputs(cfg)
    x["f0_hz"] = x["f0_hz"][:, :-3]
    with pytest.raises(ValueError, match="f0_hz has 37 frames but content has 40"):
        gen.infer(**x)
