"""Voice export in RVC's inference format and loading of rvc-ray / RVC-WebUI / Applio voice files."""

from __future__ import annotations

import pytest
import torch

from rvc_ray.config import load_run_config
from rvc_ray.model.build import build_generator, rvc_config_list
from rvc_ray.model.export import VoiceFormatError, export_voice, load_voice


@pytest.fixture(scope="module")
def cfg():
    return load_run_config("tiny_cpu")


def _inputs(cfg, frames: int = 30):
    gen = torch.Generator().manual_seed(5)
    return (
        torch.randn(1, frames, cfg.model.content_dim, generator=gen),
        torch.tensor([frames]),
        torch.randint(1, 256, (1, frames), generator=gen),
        torch.full((1, frames), 180.0),
        torch.tensor([1]),
    )


def test_export_format_matches_rvc(cfg, tmp_path) -> None:
    gen = build_generator(cfg.model, cfg.audio)
    path = export_voice(gen.state_dict(), cfg.model, cfg.audio, tmp_path / "v_e3_s30.pth", epoch=3, step=30, name="v")
    raw = torch.load(path, weights_only=True)
    assert {"weight", "config", "info", "sr", "f0", "version"} <= raw.keys()
    assert raw["info"] == "3epoch" and raw["sr"] == "16k" and raw["f0"] == 1 and raw["version"] == "v2"
    assert len(raw["config"]) == 18 and raw["config"][-1] == 16000 and raw["config"][0] == cfg.audio.spec_channels
    assert raw["config"] == rvc_config_list(cfg.model, cfg.audio)
    assert not any(k.startswith("enc_q.") for k in raw["weight"])
    assert all(v.dtype == torch.float16 for v in raw["weight"].values())
    expected = {k for k in gen.state_dict() if not k.startswith("enc_q.")}
    assert set(raw["weight"]) == expected


def test_export_then_load_gives_the_same_waveform(cfg, tmp_path) -> None:
    gen = build_generator(cfg.model, cfg.audio).eval()
    path = export_voice(gen.state_dict(), cfg.model, cfg.audio, tmp_path / "v.pth", epoch=1, step=2, name="v")
    voice = load_voice(path)
    assert (voice.sample_rate, voice.version, voice.use_f0) == (16000, "v2", True)
    assert (voice.num_speakers, voice.content_dim) == (cfg.model.spk_embed_dim, cfg.model.content_dim)
    assert voice.generator.enc_q is None and not voice.generator.training
    # the reference: the same generator with its weights rounded to fp16, as the file stores them
    gen.load_state_dict({k: v.half().float() for k, v in gen.state_dict().items()})
    ref = gen.infer(*_inputs(cfg), generator=torch.Generator().manual_seed(3))
    out = voice.generator.infer(*_inputs(cfg), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    again = load_voice(path).generator.infer(*_inputs(cfg), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(again, out, rtol=0, atol=0)


def test_loads_rvc_webui_and_applio_style_files(cfg, tmp_path) -> None:
    gen = build_generator(cfg.model, cfg.audio)
    weight = {k: v.half() for k, v in gen.state_dict().items() if not k.startswith("enc_q.")}
    config = rvc_config_list(cfg.model, cfg.audio)
    config[1] = 32  # RVC hard-codes the segment size in exports
    config[-3] = 109  # RVC/Applio loaders take the speaker count from emb_g instead
    torch.save(
        {"weight": weight, "config": config, "info": "5epoch", "sr": "16k", "f0": 1, "version": "v2"},
        tmp_path / "webui.pth",
    )
    applio = {
        "weight": weight,
        "config": config,
        "epoch": 5,
        "step": 9,
        "sr": 16000,
        "f0": True,
        "version": "v2",
        "vocoder": "HiFi-GAN",
        "embedder_model": "contentvec",
        "speakers_id": 1,
    }
    torch.save(applio, tmp_path / "applio.pth")
    for name in ("webui.pth", "applio.pth"):
        voice = load_voice(tmp_path / name)
        assert voice.sample_rate == 16000 and voice.use_f0 and voice.num_speakers == cfg.model.spk_embed_dim
    assert load_voice(tmp_path / "applio.pth").info["embedder_model"] == "contentvec"


def test_no_f0_voice_round_trip(cfg, tmp_path) -> None:
    model = cfg.model.model_copy(update={"use_f0": False})
    gen = build_generator(model, cfg.audio)
    voice = load_voice(
        export_voice(gen.state_dict(), model, cfg.audio, tmp_path / "nof0.pth", epoch=1, step=1, name="n")
    )
    assert not voice.use_f0
    content, lengths, _, _, sid = _inputs(cfg)
    assert voice.generator.infer(content, lengths, None, None, sid).shape == (1, 1, 30 * cfg.audio.hop_length)


def test_bad_voice_files_are_explained(cfg, tmp_path) -> None:
    gen = build_generator(cfg.model, cfg.audio)
    torch.save({"model": gen.state_dict(), "iteration": 3}, tmp_path / "G_3.pth")
    with pytest.raises(VoiceFormatError, match="training checkpoint"):
        load_voice(tmp_path / "G_3.pth")
    path = export_voice(gen.state_dict(), cfg.model, cfg.audio, tmp_path / "v.pth", epoch=1, step=1, name="v")
    raw = torch.load(path, weights_only=True)
    torch.save({**raw, "vocoder": "RefineGAN"}, tmp_path / "refine.pth")
    with pytest.raises(VoiceFormatError, match="RefineGAN"):
        load_voice(tmp_path / "refine.pth")
    raw["weight"].pop("dec.conv_post.weight")
    torch.save(raw, tmp_path / "broken.pth")
    with pytest.raises(VoiceFormatError, match="dec.conv_post.weight"):
        load_voice(tmp_path / "broken.pth")


def test_extra_info_is_kept_and_reserved_keys_refused(cfg, tmp_path) -> None:
    gen = build_generator(cfg.model, cfg.audio)
    path = export_voice(
        gen.state_dict(),
        cfg.model,
        cfg.audio,
        tmp_path / "v.pth",
        epoch=1,
        step=1,
        name="v",
        extra_info={"embedder_model": "random", "dataset_length": 12.5, "source": tmp_path},
    )
    info = load_voice(path).info
    assert info["embedder_model"] == "random" and info["source"] == str(tmp_path)
    with pytest.raises(ValueError, match="reserved"):
        export_voice(
            gen.state_dict(), cfg.model, cfg.audio, tmp_path / "w.pth", epoch=1, step=1, name="v", extra_info={"sr": 1}
        )
