"""The voice directory registry (ids, traversal, symlinks), voice metadata, and the app's settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from rvc_ray.config import FeatureConfig, ServeConfig, load_run_config
from rvc_ray.serve.app import _converter_options, build_settings
from rvc_ray.serve.catalog import read_voice_info
from rvc_ray.serve.schemas import ServeSettings
from rvc_ray.serve.voices import InvalidVoiceIdError, VoiceNotFoundError, VoiceRegistry


def _info(registry: VoiceRegistry, voice_id: str):
    files = registry.resolve(voice_id)
    return read_voice_info(files, registry.fetch(files))


def _rvc_voice_file(path: Path, *, sr="40k", f0=1, version="v2", speakers=3, **extra) -> Path:
    """A minimal RVC-format export (the keys RVC-WebUI / Applio write), with a tiny weight dict."""
    ckpt = {
        "weight": {"emb_g.weight": torch.zeros(speakers, 4), "dec.conv_pre.weight": torch.zeros(2, 2, 3)},
        "config": [
            1025,
            32,
            192,
            192,
            768,
            2,
            6,
            3,
            0,
            "1",
            [3, 7, 11],
            [[1, 3, 5]] * 3,
            [10, 10, 2, 2],
            512,
            [16, 16, 4, 4],
            speakers,
            256,
            40000,
        ],
        "info": "20epoch",
        "sr": sr,
        "f0": f0,
        "version": version,
        **extra,
    }
    torch.save(ckpt, path)
    return path


@pytest.fixture
def voices_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "voices"
    directory.mkdir()
    _rvc_voice_file(directory / "alice.pth")
    (directory / "alice.index").write_bytes(b"x")
    _rvc_voice_file(
        directory / "demo_e4_s100.pth",
        sr=16000,
        f0=1,
        content_encoder={"kind": "random", "path": "/secret/server/path", "identity": "random:tiny:..."},
    )
    (directory / "demo.index").write_bytes(b"x")
    _rvc_voice_file(directory / "bob.v1-old.pth", sr="48k", f0=0, version="v1", speakers=1)
    return directory


def test_resolve_finds_model_and_index(voices_dir):
    registry = VoiceRegistry(voices_dir)
    alice = registry.fetch(registry.resolve("alice"))
    assert alice.model_path == (voices_dir / "alice.pth").resolve() and alice.index_path.name == "alice.index"
    assert registry.fetch(registry.resolve("demo_e4_s100")).index_path.name == "demo.index"  # run export + index
    assert registry.resolve("bob.v1-old").index is None


@pytest.mark.parametrize(
    "voice_id", ["../alice", "..", ".hidden", "a/b", "a\\b", "", "x" * 200, "alice.pth/..", "al ice", "ålice", "%2e%2e"]
)
def test_malformed_ids_are_rejected_before_touching_the_disk(voices_dir, voice_id):
    with pytest.raises(InvalidVoiceIdError, match="invalid voice id"):
        VoiceRegistry(voices_dir).resolve(voice_id)


def test_unknown_voice_and_symlink_escape_are_not_found(voices_dir, tmp_path):
    outside = _rvc_voice_file(tmp_path / "outside.pth")
    os.symlink(outside, voices_dir / "escape.pth")
    os.symlink(voices_dir / "alice.pth", voices_dir / "alias.pth")  # a link that stays inside is fine
    registry = VoiceRegistry(voices_dir)
    with pytest.raises(VoiceNotFoundError, match="no voice named 'carol'"):
        registry.resolve("carol")
    with pytest.raises(VoiceNotFoundError) as excinfo:
        registry.resolve("escape")
    assert str(tmp_path) not in str(excinfo.value)
    assert registry.fetch(registry.resolve("alias")).model_path == (voices_dir / "alice.pth").resolve()
    ids = [v.voice_id for v in registry.list_voices()]
    assert ids == ["alias", "alice", "bob.v1-old", "demo_e4_s100"]


def test_listing_skips_files_with_unservable_names(voices_dir):
    _rvc_voice_file(voices_dir / ".secret.pth")
    _rvc_voice_file(voices_dir / "with space.pth")
    (voices_dir / "dir.pth").mkdir()
    assert [v.voice_id for v in VoiceRegistry(voices_dir).list_voices()] == ["alice", "bob.v1-old", "demo_e4_s100"]
    assert VoiceRegistry(voices_dir / "missing").list_voices() == []


def test_voice_info_reads_rvc_and_applio_fields(voices_dir):
    registry = VoiceRegistry(voices_dir)
    alice = _info(registry, "alice")
    assert (alice.sample_rate, alice.version, alice.use_f0, alice.num_speakers, alice.has_index) == (
        40000,
        "v2",
        True,
        3,
        True,
    )
    assert alice.training["info"] == "20epoch" and alice.error is None
    bob = _info(registry, "bob.v1-old")
    assert (bob.sample_rate, bob.version, bob.use_f0, bob.has_index) == (48000, "v1", False, False)
    demo = _info(registry, "demo_e4_s100")
    assert demo.sample_rate == 16000 and demo.training["content_encoder"] == {"kind": "random"}  # no paths shown


def test_voice_info_reports_unreadable_files(voices_dir):
    (voices_dir / "broken.pth").write_bytes(b"not a torch file")
    torch.save({"something": 1}, voices_dir / "other.pth")
    registry = VoiceRegistry(voices_dir)
    broken = _info(registry, "broken")
    assert broken.error.startswith("unreadable voice file") and str(voices_dir) not in broken.error
    assert _info(registry, "other").error == "not an RVC voice file"


def test_settings_come_from_the_run_config(voices_dir, tmp_path):
    cfg = load_run_config("tiny_cpu", ["serve.max_voices_per_replica=2", "serve.api_key=k", "serve.port=8123"])
    settings = build_settings(cfg, voices_dir)
    assert settings.serve.voices_dir == str(voices_dir.resolve()) and settings.serve.port == 8123
    assert settings.serve.api_key == "k" and settings.serve.max_voices_per_replica == 2
    assert settings.features == cfg.features and settings.serve.f0_method == cfg.serve.f0_method
    assert ServeSettings.model_validate(settings.model_dump(mode="json")) == settings  # what replicas receive
    with pytest.raises(FileNotFoundError, match="voices directory .* does not exist"):
        build_settings(cfg, tmp_path / "nope")
    fixed = _converter_options(settings)
    assert fixed["num_replicas"] == 1 and fixed["ray_actor_options"] == {"num_cpus": 1.0}
    scaled = _converter_options(
        build_settings(
            load_run_config("tiny_cpu", ["serve.autoscale_max_replicas=3", "serve.gpus_per_replica=0.5"]), voices_dir
        )
    )
    assert "num_replicas" not in scaled and scaled["autoscaling_config"]["max_replicas"] == 3
    assert scaled["ray_actor_options"]["num_gpus"] == 0.5


def test_memory_cap_evicts_least_recently_used_voices(voices_dir):
    """VoiceConverter._make_room evicts through Serve's multiplex wrapper until the new voice fits."""
    import asyncio
    from collections import OrderedDict

    from rvc_ray.serve.deployment import VoiceConverter

    class _Wrapper:  # the part of serve.multiplex._ModelMultiplexWrapper that _make_room uses
        def __init__(self):
            self.models = OrderedDict((v, object()) for v in ("a", "b", "c"))

        async def unload_model_lru(self):
            self.models.popitem(last=False)

    async def load_voice(voice_id):
        return voice_id

    converter = VoiceConverter.func_or_class.__new__(VoiceConverter.func_or_class)
    converter.settings = ServeSettings(
        serve=ServeConfig(voices_dir=str(voices_dir), max_voice_memory_mb=10), features=FeatureConfig()
    )
    converter._voice_bytes = {"a": 4 * 2**20, "b": 3 * 2**20, "c": 2 * 2**20}
    converter._load_fn = load_voice
    wrapper = _Wrapper()
    setattr(load_voice, "__serve_multiplex_wrapper", wrapper)
    asyncio.run(converter._make_room(3 * 2**20))  # 9 MB loaded + 3 MB > 10 MB: "a" (LRU) must go
    assert list(wrapper.models) == ["b", "c"] and "a" not in converter._voice_bytes
    asyncio.run(converter._make_room(9 * 2**20))
    assert list(wrapper.models) == []
