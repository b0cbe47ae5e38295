"""F0 defaults, run scores from metrics.jsonl, the result cache, voices in a bucket, ingress sizing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rvc_ray.config import load_run_config
from rvc_ray.inference.defaults import choose_f0_method, f0_method_problem, trained_f0_method
from rvc_ray.serve.app import build_settings, ingress_max_ongoing_requests, storage_environment
from rvc_ray.serve.catalog import RunScores, read_voice_info
from rvc_ray.serve.results import ResultCache, input_key, render_spectrogram_png, result_key
from rvc_ray.serve.voices import VoiceNotFoundError, VoiceRegistry


def _voice(path: Path, seed: int = 0, **extra) -> Path:
    torch.manual_seed(seed)
    torch.save({"weight": {"emb_g.weight": torch.randn(1, 4)}, "config": [], "sr": "40k", "f0": 1, **extra}, path)
    return path


def test_f0_defaults_follow_request_then_configured_then_trained_then_bundled(tmp_path):
    rmvpe = tmp_path / "rmvpe.pt"
    assert choose_f0_method("crepe", "fcpe", "rmvpe", None).method == "crepe"  # the request wins
    assert choose_f0_method(None, "crepe-tiny", "fcpe", None).method == "crepe-tiny"
    no_weights = choose_f0_method(None, "rmvpe", "crepe", None)
    assert no_weights.method == "crepe" and "trained with" in no_weights.reason and "rmvpe_path" in no_weights.reason
    assert choose_f0_method(None, "rmvpe", "rmvpe", None).method == "fcpe"  # nothing runnable: bundled
    assert choose_f0_method(None, "rmvpe", None, rmvpe).reason.startswith("bundled")  # configured file is missing
    rmvpe.write_bytes(b"weights")
    assert choose_f0_method(None, "rmvpe", None, rmvpe).method == "rmvpe"
    assert f0_method_problem("rmvpe", tmp_path / "nope.pt") == (
        "rmvpe needs features.rmvpe_path, which does not exist on this server"
    )
    assert f0_method_problem("fcpe", None) is None and "unknown" in f0_method_problem("harvest", None)
    assert trained_f0_method({"f0_method": "crepe"}) == "crepe" and trained_f0_method({"f0_method": "x"}) is None


def test_run_scores_come_from_the_runs_metrics_file_and_follow_its_changes(tmp_path):
    voices = tmp_path / "demo" / "voices"
    voices.mkdir(parents=True)
    (tmp_path / "demo" / "train").mkdir()
    metrics = tmp_path / "demo" / "train" / "metrics.jsonl"
    lines = [
        {"kind": "step", "epoch": 1, "step": 1, "loss/g/mel": 2.0},
        {"kind": "epoch", "epoch": 1, "step": 3, "val/mel_l1": 0.8, "val/mcd": float("nan"), "loss/g/mel": 1.0},
    ]
    metrics.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"kind": "epo')  # a line being written
    scores = RunScores(str(voices))
    scores.refresh()
    assert scores.for_voice(1, 3) == {"val/mel_l1": 0.8}
    assert scores.for_voice(1, 4) == {} and scores.for_voice(2, None) == {} and scores.for_voice(None, None) == {}
    with metrics.open("a") as handle:
        handle.write('ch"}\n' + json.dumps({"kind": "epoch", "epoch": 1, "step": 3, "val/mel_l1": 0.7}) + "\n")
    scores.refresh()
    assert scores.for_voice(1, 3) == {"val/mel_l1": 0.7}  # a resumed run's later line wins


def test_voice_info_has_run_epoch_step_and_recorded_scores(tmp_path):
    registry = VoiceRegistry(tmp_path)
    _voice(tmp_path / "solo_e7_s70.pth", **{"val/mel_l1": 0.5})
    _voice(tmp_path / "named.pth", model_name="run1", epoch=4, step=40)
    solo = registry.resolve("solo_e7_s70")
    info = read_voice_info(solo, registry.fetch(solo))
    assert (info.run, info.epoch, info.step, info.validation) == ("solo", 7, 70, {"val/mel_l1": 0.5})
    named = registry.resolve("named")
    info = read_voice_info(named, registry.fetch(named))
    assert (info.run, info.epoch, info.step, info.validation) == ("run1", 4, 40, {})


def test_a_replaced_voice_file_gets_a_new_fingerprint(tmp_path):
    registry = VoiceRegistry(tmp_path)
    _voice(tmp_path / "v.pth", seed=0)
    before = registry.resolve("v")
    assert registry.resolve("v").cache_key == before.cache_key  # stable while the file is unchanged
    _voice(tmp_path / "v.pth", seed=1)  # same name, same size, new content
    os.utime(tmp_path / "v.pth", ns=(before_ns := os.stat(tmp_path / "v.pth").st_mtime_ns, before_ns + 10**6))
    after = registry.resolve("v")
    assert after.voice_id == "v" and after.cache_key != before.cache_key
    (tmp_path / "v.index").write_bytes(b"x")
    assert registry.resolve("v").cache_key != after.cache_key  # an index added changes it too


def test_voices_in_a_bucket_are_listed_resolved_and_downloaded_once(s3_bucket, tmp_path):
    from rvc_ray import storage

    local = tmp_path / "upload"
    local.mkdir()
    _voice(local / "demo_e1_s2.pth")
    (local / "demo.index").write_bytes(b"index")
    (local / "notes.txt").write_text("not a voice")
    location = f"{s3_bucket}/runs/demo/voices/"
    storage.upload_dir(local, location)
    registry = VoiceRegistry(location, cache_dir=tmp_path / "cache")
    assert registry.remote and registry.location == f"{s3_bucket}/runs/demo/voices" and registry.is_readable()
    files = registry.list_voices()
    assert [f.voice_id for f in files] == ["demo_e1_s2"] and files[0].index.endswith("/demo.index")
    copies = registry.fetch(files[0])
    assert copies.model_path.read_bytes() == (local / "demo_e1_s2.pth").read_bytes()
    assert copies.index_path.read_bytes() == b"index" and str(tmp_path / "cache") in str(copies.model_path)
    info = read_voice_info(files[0], copies)
    assert info.error is None and (info.run, info.epoch, info.step) == ("demo", 1, 2)
    copies.model_path.write_bytes(b"local marker")  # a second fetch of the same fingerprint downloads nothing
    assert registry.fetch(registry.resolve("demo_e1_s2")).model_path.read_bytes() == b"local marker"
    with pytest.raises(VoiceNotFoundError):
        registry.resolve("notes")
    assert RunScores(location).candidates[0] == f"{s3_bucket}/runs/demo/train/metrics.jsonl"


def test_settings_accept_a_bucket_and_refuse_a_missing_one(s3_bucket):
    from rvc_ray.storage import StorageError

    cfg = load_run_config("tiny_cpu")
    assert build_settings(cfg, f"{s3_bucket}/voices").serve.voices_dir == f"{s3_bucket}/voices"
    with pytest.raises(StorageError, match="cannot list voices at s3://no-such-bucket-here/voices: the bucket 'no-such-bucket-here' does not"):
        build_settings(cfg, "s3://no-such-bucket-here/voices")
    env = storage_environment(f"{s3_bucket}/voices", {"AWS_ENDPOINT_URL": "http://x", "HOME": "/root"})
    assert env == {"AWS_ENDPOINT_URL": "http://x"} and storage_environment("/local", {"AWS_ENDPOINT_URL": "x"}) == {}


def test_the_ingress_admits_what_every_converter_replica_can_hold(tmp_path):
    def settings(*overrides: str):
        return build_settings(load_run_config("tiny_cpu", list(overrides)), tmp_path)

    assert ingress_max_ongoing_requests(settings()) == 16  # never below Serve-default-beating headroom
    two = settings("serve.num_replicas=2")
    assert ingress_max_ongoing_requests(two) >= 2 * two.max_ongoing_requests
    scaled = settings("serve.num_replicas=2", "serve.autoscale_max_replicas=10")
    assert ingress_max_ongoing_requests(scaled) == 2 * 10 * scaled.max_ongoing_requests


def test_result_cache_is_an_lru_bounded_in_bytes():
    cache = ResultCache(max_bytes=10)
    cache.put("a", b"1234", {"n": 1})
    cache.put("b", b"1234")
    assert cache.get("a") == (b"1234", {"n": 1})  # "a" is now the most recently used
    cache.put("c", b"1234")  # 12 bytes > 10: "b" goes
    assert cache.get("b") is None and cache.get("a") is not None and cache.size_bytes == 8
    cache.put("huge", b"x" * 11)  # larger than the whole cache: not stored, nothing evicted
    assert cache.get("huge") is None and len(cache) == 2


def test_result_keys_change_with_voice_content_input_and_options():
    base = result_key("v@1", input_key(b"audio"), {"seed": 0})
    assert base == result_key("v@1", input_key(b"audio"), {"seed": 0}) and len(base) == 32
    assert len({base, result_key("v@2", input_key(b"audio"), {"seed": 0})}) == 2
    assert len({base, result_key("v@1", input_key(b"other"), {"seed": 0})}) == 2
    assert len({base, result_key("v@1", input_key(b"audio"), {"seed": 1})}) == 2


def test_spectrogram_is_a_png():
    t = np.arange(16000) / 16000
    png = render_spectrogram_png(np.sin(2 * np.pi * 440 * t).astype(np.float32), 16000, title="tone")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
