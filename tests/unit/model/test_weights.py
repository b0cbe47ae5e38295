"""Pretrained / training-checkpoint files: checks with actionable messages, loading, RVC G_/D_ format."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rvc_ray.config import load_run_config
from rvc_ray.model.build import build_discriminator, build_generator
from rvc_ray.model.weights import (
    PretrainedMismatchError,
    describe_generator_sample_rate,
    load_pretrained,
    load_rvc_checkpoint,
    save_rvc_checkpoint,
)
from tests.unit.model.test_model_keys import expected_discriminator_manifest, expected_generator_manifest


@pytest.fixture(scope="module")
def cfg():
    return load_run_config("tiny_cpu")


@pytest.fixture(scope="module")
def cfg40k():
    return load_run_config("rvc_v2_40k")


@pytest.fixture(scope="module")
def meta40k(cfg40k):
    """Full-size 40k G and D on the meta device: shapes only, built in well under a second."""
    with torch.device("meta"):
        return build_generator(cfg40k.model, cfg40k.audio), build_discriminator(cfg40k.model)


def _fake_file(path: Path, manifest: dict[str, tuple], drop: tuple[str, ...] = (), **extra) -> Path:
    """A pretrained-style file whose tensors are zero-strided views (a 40k G costs a few bytes on disk)."""
    state = {k: torch.zeros(()).expand(*shape) for k, shape in manifest.items() if not k.startswith(drop)}
    torch.save({"model": state, **extra}, path)
    return path


def _tiny_models(cfg):
    return build_generator(cfg.model, cfg.audio), build_discriminator(cfg.model, channel_divisor=8)


def test_pretrained_round_trip_loads_every_tensor(cfg, tmp_path) -> None:
    gen, disc = _tiny_models(cfg)
    save_rvc_checkpoint(tmp_path / "f0G.pth", gen, None, epoch=0, learning_rate=1e-4)
    save_rvc_checkpoint(tmp_path / "f0D.pth", disc, None, epoch=0, learning_rate=1e-4)
    gen2, disc2 = _tiny_models(cfg)
    report = load_pretrained(gen2, disc2, tmp_path / "f0G.pth", tmp_path / "f0D.pth", cfg.model, cfg.audio)
    assert len(report.generator.loaded) == len(gen.state_dict()) and not report.generator.missing
    assert len(report.discriminator.loaded) == len(disc.state_dict()) and not report.discriminator.unexpected
    for k, v in gen2.state_dict().items():
        torch.testing.assert_close(v, gen.state_dict()[k], rtol=0, atol=0)


def test_full_40k_manifest_file_passes_the_checks(cfg40k, meta40k, tmp_path) -> None:
    from rvc_ray.model.weights import check_discriminator_state, check_generator_state, read_rvc_file

    gen, disc = meta40k
    g = read_rvc_file(_fake_file(tmp_path / "f0G40k.pth", expected_generator_manifest()))["model"]
    d = read_rvc_file(_fake_file(tmp_path / "f0D40k.pth", expected_discriminator_manifest()))["model"]
    check_generator_state(g, gen.state_dict(), cfg40k.model, cfg40k.audio, "f0G40k.pth")
    check_discriminator_state(d, disc.state_dict(), cfg40k.model, "f0D40k.pth")
    assert describe_generator_sample_rate(g) == "a 40 kHz"


@pytest.mark.parametrize(
    ("manifest_kwargs", "drop", "match"),
    [
        (
            {"spec_ch": 1025, "rates": (12, 10, 2, 2), "kernels": (24, 20, 4, 4)},
            (),
            r"48 kHz \(v2\) generator but the run is v2 at 40 kHz",
        ),
        ({"spec_ch": 513, "rates": (10, 8, 2, 2), "kernels": (20, 16, 4, 4)}, (), r"32 kHz \(v2\) generator"),
        ({"content": 256}, (), r"v1 generator \(256-d content features\)"),
        ({}, ("enc_p.emb_pitch",), r"without F0"),
        ({"spk": 3}, (), r"3 speaker embeddings but model.spk_embed_dim=109"),
    ],
)
def test_generator_mismatches_are_explained(cfg40k, meta40k, tmp_path, manifest_kwargs, drop, match) -> None:
    gen, disc = meta40k
    path = _fake_file(tmp_path / "f0Gx.pth", expected_generator_manifest(**manifest_kwargs), drop)
    with pytest.raises(PretrainedMismatchError, match=match):
        load_pretrained(gen, disc, path, None, cfg40k.model, cfg40k.audio)


def test_v1_discriminator_is_refused(cfg40k, meta40k, tmp_path) -> None:
    gen, disc = meta40k
    path = _fake_file(tmp_path / "f0D40k_v1.pth", expected_discriminator_manifest(periods=(2, 3, 5, 7, 11, 17)))
    with pytest.raises(PretrainedMismatchError, match=r"7 sub-discriminators \(RVC v1"):
        load_pretrained(gen, disc, None, path, cfg40k.model, cfg40k.audio)


def test_swapped_files_and_exported_voices_are_refused(cfg, tmp_path) -> None:
    gen, disc = _tiny_models(cfg)
    save_rvc_checkpoint(tmp_path / "G.pth", gen, None, epoch=0, learning_rate=1e-4)
    save_rvc_checkpoint(tmp_path / "D.pth", disc, None, epoch=0, learning_rate=1e-4)
    with pytest.raises(PretrainedMismatchError, match="discriminator checkpoint, not a generator"):
        load_pretrained(gen, disc, tmp_path / "D.pth", tmp_path / "G.pth", cfg.model, cfg.audio)
    torch.save({"weight": gen.state_dict(), "config": [0] * 18}, tmp_path / "voice.pth")
    with pytest.raises(PretrainedMismatchError, match="exported voice"):
        load_pretrained(gen, disc, tmp_path / "voice.pth", None, cfg.model, cfg.audio)


def test_a_failed_check_loads_nothing(cfg, tmp_path) -> None:
    gen, disc = _tiny_models(cfg)
    other_gen, _ = _tiny_models(cfg)
    save_rvc_checkpoint(tmp_path / "G.pth", other_gen, None, epoch=0, learning_rate=1e-4)
    save_rvc_checkpoint(tmp_path / "D_is_G.pth", other_gen, None, epoch=0, learning_rate=1e-4)
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    with pytest.raises(PretrainedMismatchError):
        load_pretrained(gen, disc, tmp_path / "G.pth", tmp_path / "D_is_G.pth", cfg.model, cfg.audio)
    for k, v in gen.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_rvc_checkpoint_round_trip(cfg, tmp_path) -> None:
    gen, _ = _tiny_models(cfg)
    opt = torch.optim.AdamW(gen.parameters(), lr=1e-4)
    gen(
        torch.randn(1, 20, cfg.model.content_dim),
        torch.tensor([20]),
        torch.randint(1, 255, (1, 20)),
        torch.full((1, 20), 150.0),
        torch.rand(1, cfg.audio.spec_channels, 20),
        torch.tensor([20]),
        torch.tensor([0]),
    ).wav.sum().backward()
    opt.step()
    path = save_rvc_checkpoint(tmp_path / "G_71.pth", gen, opt, epoch=8, learning_rate=1e-4)
    raw = torch.load(path, weights_only=True)
    assert {"model", "iteration", "optimizer", "learning_rate"} <= set(raw) and raw["iteration"] == 8
    assert any(k.endswith("weight_g") for k in raw["model"])
    ckpt = load_rvc_checkpoint(path)
    assert (ckpt.epoch, ckpt.learning_rate) == (8, 1e-4) and ckpt.optimizer_state is not None
    gen2, _ = _tiny_models(cfg)
    opt2 = torch.optim.AdamW(gen2.parameters(), lr=1e-4)
    assert int(load_rvc_checkpoint(path, gen2, opt2)) == 8
    for k, v in gen2.state_dict().items():
        torch.testing.assert_close(v, gen.state_dict()[k], rtol=0, atol=0)
    assert len(opt2.state) == len(opt.state)


def test_missing_file_and_garbage_are_named(cfg, tmp_path) -> None:
    gen, disc = _tiny_models(cfg)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_rvc_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedMismatchError, match="junk.pth"):
        load_pretrained(gen, disc, tmp_path / "junk.pth", None, cfg.model, cfg.audio)
    with pytest.raises(PretrainedMismatchError, match=r"junk\.pth: not a torch \.pth file \(neither a zip archive nor a pickle\)$"):
        load_rvc_checkpoint(tmp_path / "junk.pth")
    (tmp_path / "zip.pth").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(PretrainedMismatchError, match=r"zip\.pth: cannot be read as an RVC \.pth \(RuntimeError: .*ZIP") as err:
        load_rvc_checkpoint(tmp_path / "zip.pth")
    assert len(str(err.value)) < 400, "one readable line, not torch's page of advice"


class _NotATensor:
    pass


def test_a_pickled_object_is_refused_with_its_name(tmp_path) -> None:
    torch.save({"weight": _NotATensor()}, tmp_path / "obj.pth")
    with pytest.raises(PretrainedMismatchError, match=r"Unsupported global: GLOBAL tests\.unit\.model\.test_weights\._NotATensor\)") as err:
        load_rvc_checkpoint(tmp_path / "obj.pth")
    assert "\n" not in str(err.value) and len(str(err.value)) < 400
