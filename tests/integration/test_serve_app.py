"""The Serve application end to end: one app start on 127.0.0.1 (a free port) with tiny voices.

Voices: ``voiceA`` (tiny v2 generator, random init, with a random FAISS index), ``voiceB`` (another
random init, no index), ``needs_hubert`` (a voice whose export says it was trained on real HuBERT
features, which this server does not have) and ``broken`` (not a voice file).
"""

from __future__ import annotations

import io
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytestmark = [pytest.mark.ray, pytest.mark.slow]

API_KEY = "test-key"
SR = 16000  # tiny_cpu voices run at 16 kHz


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tone(seconds: float, hz: float, rate: int, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    # a sung-vowel-like tone: a few harmonics with a slow vibrato-free envelope
    wav = sum(amp / k * np.sin(2 * np.pi * hz * k * t) for k in (1, 2, 3))
    return wav.astype(np.float32)


def _wav_bytes(wav: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wav, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _export_tiny_voice(cfg, path: Path, name: str, seed: int, extra_info: dict | None = None) -> None:
    import torch

    from rvc_ray.features.content import describe_content_encoder
    from rvc_ray.model.build import build_generator
    from rvc_ray.model.export import export_voice

    torch.manual_seed(seed)
    generator = build_generator(cfg.model, cfg.audio)
    info = {"content_encoder": describe_content_encoder(cfg.features, cfg.model).to_json()}
    info.update(extra_info or {})
    export_voice(generator.state_dict(), cfg.model, cfg.audio, path, epoch=1, step=1, name=name, extra_info=info)


def _write_random_index(path: Path, dim: int) -> None:
    import faiss

    vectors = np.random.default_rng(0).standard_normal((400, dim)).astype(np.float32)
    index = faiss.index_factory(dim, "IVF4,Flat")
    index.train(vectors)
    index.add(vectors)
    faiss.extract_index_ivf(index).nprobe = 1
    faiss.write_index(index, str(path))


@pytest.fixture(scope="module")
def app_url(ray_cluster, tmp_path_factory) -> str:
    from ray import serve

    from rvc_ray.config import load_run_config
    from rvc_ray.serve.app import run_serve

    voices = tmp_path_factory.mktemp("voices")
    cfg = load_run_config(
        "tiny_cpu",
        [
            f"serve.port={_free_port()}",
            f"serve.api_key={API_KEY}",
            "serve.f0_method=fcpe",
            "serve.max_upload_mb=1",
            "serve.max_duration_s=5",
            "serve.cpus_per_replica=1",
        ],
    )
    _export_tiny_voice(cfg, voices / "voiceA.pth", "voiceA", seed=0)
    _write_random_index(voices / "voiceA.index", cfg.model.content_dim)
    _export_tiny_voice(cfg, voices / "voiceB.pth", "voiceB", seed=1)
    _export_tiny_voice(
        cfg,
        voices / "needs_hubert.pth",
        "needs_hubert",
        seed=2,
        extra_info={"content_encoder": {"kind": "hf", "path": "/models/contentvec"}},
    )
    (voices / "broken.pth").write_bytes(b"this is not a voice")
    settings = run_serve(cfg, voices_dir=voices, blocking=False)
    yield f"http://{settings.host}:{settings.port}"
    serve.shutdown()


@pytest.fixture(scope="module")
def client(app_url):
    import httpx

    with httpx.Client(base_url=app_url, headers={"X-API-Key": API_KEY}, timeout=120) as session:
        yield session


def _convert(client, voice: str, wav: np.ndarray, rate: int, **params):
    return client.post(
        f"/v1/voices/{voice}/convert",
        params=params,
        content=_wav_bytes(wav, rate),
        headers={"Content-Type": "audio/wav"},
    )


def _decode(response) -> tuple[np.ndarray, int]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    wav, rate = sf.read(io.BytesIO(response.content), dtype="float32")
    return wav, rate


def _output_f0(wav: np.ndarray, rate: int, frame_rate_hz: float = 100.0) -> float:
    """F0 of a converted sustained tone: the strongest spectral peak in 60..900 Hz.

    A randomly initialised decoder adds a DC offset and strong harmonics of the 100 Hz frame rate (its
    transposed-conv upsampling repeats every hop), which fool pyin/YIN into reporting ~100-110 Hz; the
    NSF harmonic source it is driven by (the voice's pitch) is the strongest peak once those bins
    (+-8 Hz around multiples of 100 Hz) are set aside. Input tones are chosen away from them.
    """
    wav = wav - wav.mean()
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    freqs = np.fft.rfftfreq(len(wav), 1 / rate)
    keep = (freqs >= 60) & (freqs <= 900) & (np.abs(freqs - np.round(freqs / frame_rate_hz) * frame_rate_hz) > 8)
    return float(freqs[keep][np.argmax(spectrum[keep])])


def test_health_and_voice_list(client, app_url):
    import httpx

    health = httpx.get(f"{app_url}/healthz").json()  # no API key needed
    assert health == {"status": "ok", "voices": 4, "voices_dir_readable": True}
    voices = {v["id"]: v for v in client.get("/v1/voices").json()["voices"]}
    assert sorted(voices) == ["broken", "needs_hubert", "voiceA", "voiceB"]
    a, b = voices["voiceA"], voices["voiceB"]
    assert (a["sample_rate"], a["version"], a["use_f0"], a["has_index"]) == (16000, "v2", True, True)
    assert (b["sample_rate"], b["has_index"]) == (16000, False)
    assert voices["broken"]["error"] and voices["broken"]["sample_rate"] is None
    assert "/models/contentvec" not in str(voices["needs_hubert"])  # server paths are never shown
    assert client.get("/v1/voices/voiceA").json()["id"] == "voiceA"


def test_conversion_returns_audio_of_the_right_length_and_rate(client):
    wav, rate = _decode(_convert(client, "voiceA", _tone(1.5, 220, 44100), 44100, seed=0))
    assert rate == SR and wav.shape == (int(1.5 * SR),)
    assert np.isfinite(wav).all() and 0 < np.abs(wav).max() <= 0.99 + 1e-3
    wav, rate = _decode(_convert(client, "voiceA", _tone(1.5, 220, 44100), 44100, output_sample_rate=22050))
    assert rate == 22050 and abs(wav.shape[0] - int(1.5 * 22050)) <= 2


def test_transpose_shifts_the_output_f0(client):
    tone = _tone(1.5, 220, SR)
    common = {"seed": 0, "index_rate": 0, "rms_mix_rate": 1}
    measured = {}
    for key in (0, 12, -7):
        wav, rate = _decode(_convert(client, "voiceA", tone, SR, f0_up_key=key, **common))
        measured[key] = _output_f0(wav, rate)
    assert abs(measured[0] - 220) < 3, measured
    for key in (12, -7):
        assert abs(12 * np.log2(measured[key] / measured[0]) - key) < 0.3, measured


def test_multipart_upload_with_form_options(client):
    files = {"file": ("tone.flac", _flac(_tone(1.0, 220, 48000), 48000), "audio/flac")}
    response = client.post("/v1/voices/voiceB/convert", files=files, data={"f0_up_key": "3", "seed": "1"})
    wav, rate = _decode(response)
    assert rate == SR and wav.shape == (SR,) and response.headers["x-rvc-voice"] == "voiceB"


def _flac(wav: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wav, rate, format="FLAC")
    return buf.getvalue()


def test_two_voices_are_served_and_each_is_loaded_once(client):
    from ray import serve

    tone = _tone(1.0, 220, SR)
    out_a = _decode(_convert(client, "voiceA", tone, SR, seed=3, index_rate=0))[0]
    out_b = _decode(_convert(client, "voiceB", tone, SR, seed=3, index_rate=0))[0]
    out_a2 = _decode(_convert(client, "voiceA", tone, SR, seed=3, index_rate=0))[0]
    assert out_a.shape == out_b.shape and not np.allclose(out_a, out_b, atol=1e-3)
    np.testing.assert_allclose(out_a, out_a2, atol=2 / 32768)  # same voice, same seed: same audio
    stats = serve.get_deployment_handle("VoiceConverter", app_name="rvc").replica_stats.remote().result()
    assert stats["loads"]["voiceA"] == 1 and stats["loads"]["voiceB"] == 1
    assert set(stats["loaded"]) >= {"voiceA", "voiceB"}


@pytest.mark.parametrize(
    "case,status,error",
    [
        ("no_key", 401, "unauthorized"),
        ("wrong_key", 401, "unauthorized"),
        ("unknown_voice", 404, "voice_not_found"),
        ("bad_voice_id", 400, "invalid_voice_id"),
        ("empty", 400, "empty_upload"),
        ("not_audio", 415, "unsupported_media_type"),
        ("too_large", 413, "upload_too_large"),
        ("too_long", 413, "audio_too_long"),
        ("too_short", 400, "invalid_audio"),
        ("bad_option", 422, "invalid_options"),
        ("unknown_option", 422, "invalid_options"),
        ("bad_speaker", 422, "invalid_options"),
        ("form_without_file", 400, "missing_audio"),
        ("file_in_other_field", 422, "invalid_options"),
        ("urlencoded_form", 415, "unsupported_media_type"),
        ("encoder_unavailable", 503, "voice_unavailable"),
        ("corrupt_voice", 503, "voice_unavailable"),
    ],
)
def test_bad_requests_get_a_specific_json_error(client, case, status, error):
    ok = _wav_bytes(_tone(0.5, 220, SR), SR)
    voice, params, headers, body, files, data = "voiceA", {}, {}, ok, None, None
    if case == "no_key":
        headers = {"X-API-Key": ""}
    elif case == "wrong_key":
        headers = {"X-API-Key": "nope"}
    elif case == "unknown_voice":
        voice = "carol"
    elif case == "bad_voice_id":
        voice = "bad voice!"
    elif case == "empty":
        body = b""
    elif case == "not_audio":
        body = b"<html>hello</html>" * 50
    elif case == "too_large":
        body = b"\0" * (1024 * 1024 + 10)
    elif case == "too_long":
        body = _wav_bytes(np.zeros(6 * 8000, np.float32), 8000)  # 6 s > max_duration_s=5, only 96 kB
    elif case == "too_short":
        body = _wav_bytes(np.zeros(100, np.float32), SR)
    elif case == "bad_option":
        params = {"index_rate": "2"}
    elif case == "unknown_option":
        params = {"pitch": "3"}
    elif case == "bad_speaker":
        params = {"speaker_id": "50"}
    elif case == "form_without_file":
        body, files = None, {"f0_up_key": (None, "1")}  # multipart with fields only
    elif case == "file_in_other_field":
        body, files = None, {"notes": ("a.wav", ok, "audio/wav")}
    elif case == "urlencoded_form":
        body, data = None, {"f0_up_key": "1"}
    elif case == "encoder_unavailable":
        voice = "needs_hubert"
    elif case == "corrupt_voice":
        voice = "broken"
    response = client.post(
        f"/v1/voices/{voice}/convert", params=params, headers=headers, content=body, files=files, data=data
    )
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["error"] == error and payload["detail"]
    assert "Traceback" not in response.text and "/tmp" not in response.text and "site-packages" not in response.text
    if case == "encoder_unavailable":
        assert "content_encoder_path" in payload["detail"]


def test_openapi_schema_documents_the_api(client):
    schema = client.get("/openapi.json").json()
    convert = schema["paths"]["/v1/voices/{voice_id}/convert"]["post"]
    params = {p["name"] for p in convert["parameters"]}
    assert {"voice_id", "f0_up_key", "index_rate", "protect", "rms_mix_rate", "output_sample_rate"} <= params
    assert "multipart/form-data" in convert["requestBody"]["content"]
    assert {"/healthz", "/v1/voices", "/v1/voices/{voice_id}"} <= set(schema["paths"])
