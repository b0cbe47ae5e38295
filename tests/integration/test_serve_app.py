"""The Serve application end to end: one app start on 127.0.0.1 (a free port) with tiny voices.

Voices: ``voiceA`` (tiny v2 generator, random init, with a random FAISS index, no F0 record: the
bundled F0 method is used), ``voiceB`` (another random init, no index, trained with ``crepe-tiny``),
``demo_e1_s2`` / ``demo_e2_s4`` (two epochs of a training run ``demo``, with the run's
``metrics.jsonl`` beside the voices directory), ``needs_hubert`` (a voice whose export says it was
trained on real HuBERT features, which this server does not have) and ``broken`` (not a voice file).
The server is configured with ``serve.f0_method=rmvpe`` and has no RMVPE weights, as a fresh install.

A second app on the same Serve instance (route ``/s3``) serves a voice from a bucket of a real S3
server (moto) with two converter replicas: it is converted, and hit by 32 concurrent clients.
"""

from __future__ import annotations

import io
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.voices import export_random_voice, write_random_index

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


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="module")
def tiny_serve_cfg():
    from rvc_ray.config import load_run_config

    return load_run_config(
        "tiny_cpu",
        [
            f"serve.port={_free_port()}",
            f"serve.api_key={API_KEY}",
            "serve.f0_method=rmvpe",  # not runnable here (no features.rmvpe_path): defaults must still work
            "serve.max_upload_mb=1",
            "serve.max_duration_s=5",
            "serve.cpus_per_replica=1",
        ],
    )


DEMO_SCORES = {1: 0.91, 2: 0.64}  # val/mel_l1 of the demo run's two epochs


@pytest.fixture(scope="module")
def app_url(ray_cluster, run_dir, tiny_serve_cfg) -> str:
    import json

    from ray import serve

    from rvc_ray.serve.app import run_serve

    cfg = tiny_serve_cfg
    voices = run_dir / "voices"
    voices.mkdir()
    export_random_voice(cfg, voices / "voiceA.pth", name="voiceA", seed=0)
    write_random_index(voices / "voiceA.index", cfg.model.content_dim)
    export_random_voice(cfg, voices / "voiceB.pth", name="voiceB", seed=1, extra_info={"f0_method": "crepe-tiny"})
    for epoch in (1, 2):
        export_random_voice(
            cfg,
            voices / f"demo_e{epoch}_s{2 * epoch}.pth",
            name="demo",
            seed=10 + epoch,
            extra_info={"f0_method": "fcpe"},
            epoch=epoch,
            step=2 * epoch,
        )
    (run_dir / "train").mkdir()
    lines = [{"kind": "step", "epoch": 1, "step": 1, "loss/g/mel": 3.0}]
    lines += [
        {"kind": "epoch", "epoch": e, "step": 2 * e, "val/mel_l1": score, "val/mcd": 9.0 + e}
        for e, score in DEMO_SCORES.items()
    ]
    (run_dir / "train" / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    export_random_voice(
        cfg,
        voices / "needs_hubert.pth",
        name="needs_hubert",
        seed=2,
        extra_info={"content_encoder": {"kind": "hf", "path": "/models/contentvec"}},
    )
    (voices / "broken.pth").write_bytes(b"this is not a voice")
    settings = run_serve(cfg, voices_dir=voices, blocking=False)
    yield f"http://{settings.serve.host}:{settings.serve.port}"
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
    assert health == {"status": "ok", "voices": 6, "voices_dir_readable": True}
    voices = {v["id"]: v for v in client.get("/v1/voices").json()["voices"]}
    assert sorted(voices) == ["broken", "demo_e1_s2", "demo_e2_s4", "needs_hubert", "voiceA", "voiceB"]
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


# --------------------------------------------------------------------------- defaults, reload, runs


def test_a_conversion_without_options_works_for_every_listed_voice(client):
    listing = client.get("/v1/voices").json()
    assert listing["f0_methods"]["fcpe"] is None and "rmvpe_path" in listing["f0_methods"]["rmvpe"]
    voices = {v["id"]: v for v in listing["voices"]}
    assert voices["voiceA"]["f0_method"] == "fcpe" and voices["voiceA"]["f0_method_reason"].startswith("bundled")
    assert voices["voiceB"]["f0_method"] == "crepe-tiny" and "trained with" in voices["voiceB"]["f0_method_reason"]
    assert voices["demo_e1_s2"]["f0_method"] == "fcpe" and "trained with" in voices["demo_e1_s2"]["f0_method_reason"]
    body = _wav_bytes(_tone(0.5, 220, SR), SR)
    for voice_id in ("voiceA", "voiceB", "demo_e1_s2"):
        response = client.post(f"/v1/voices/{voice_id}/convert", content=body)
        assert response.status_code == 200, (voice_id, response.text)
        assert response.headers["x-rvc-f0-method"] == voices[voice_id]["f0_method"]
    refused = client.post("/v1/voices/voiceA/convert", params={"f0_method": "rmvpe"}, content=body)
    assert refused.status_code == 422 and "rmvpe_path" in refused.json()["detail"]


def test_a_replaced_voice_file_is_reloaded_on_the_next_request(client, run_dir, tiny_serve_cfg):
    from ray import serve

    voice = run_dir / "voices" / "swap.pth"
    export_random_voice(tiny_serve_cfg, voice, name="swap", seed=20)
    tone = _tone(1.0, 220, SR)
    first = _decode(_convert(client, "swap", tone, SR, seed=3, index_rate=0))[0]
    again = _decode(_convert(client, "swap", tone, SR, seed=3, index_rate=0))[0]
    np.testing.assert_array_equal(first, again)
    export_random_voice(tiny_serve_cfg, voice, name="swap", seed=21)  # same name and size, new weights
    replaced = _decode(_convert(client, "swap", tone, SR, seed=3, index_rate=0))[0]
    assert replaced.shape == first.shape and not np.allclose(replaced, first, atol=1e-3)
    stats = serve.get_deployment_handle("VoiceConverter", app_name="rvc").replica_stats.remote().result()
    assert stats["loads"]["swap"] == 2
    voice.unlink()


def test_voices_are_listed_by_run_with_epoch_step_and_validation_score(client):
    voices = {v["id"]: v for v in client.get("/v1/voices").json()["voices"]}
    for epoch, score in DEMO_SCORES.items():
        info = voices[f"demo_e{epoch}_s{2 * epoch}"]
        assert (info["run"], info["epoch"], info["step"]) == ("demo", epoch, 2 * epoch)
        assert info["validation"] == {"val/mel_l1": score, "val/mcd": 9.0 + epoch}
    assert voices["voiceA"]["run"] == "voiceA" and voices["voiceA"]["validation"] == {}


def test_one_request_converts_with_every_epoch_of_a_run_and_replays_from_the_cache(client):
    body = _wav_bytes(_tone(1.2, 220, 22050), 22050)
    files = {"file": ("in.wav", body, "audio/wav")}
    started = time.perf_counter()
    first = client.post("/v1/convert", files=files, data={"run": "demo", "seed": "0"})
    cold_s = time.perf_counter() - started
    assert first.status_code == 200, first.text
    answer = first.json()
    assert [r["voice"] for r in answer["results"]] == ["demo_e1_s2", "demo_e2_s4"]
    assert [r["validation"]["val/mel_l1"] for r in answer["results"]] == [DEMO_SCORES[1], DEMO_SCORES[2]]
    assert answer["options"]["seed"] == 0 and answer["input_duration_s"] == pytest.approx(1.2, abs=1e-3)
    outputs = []
    for result in answer["results"]:
        assert not result["cached"] and result["error"] is None
        wav, rate = _decode(client.get(result["audio_url"]))
        assert rate == SR and wav.shape == (int(1.2 * SR),)
        outputs.append(wav)
        assert client.get(result["spectrogram_url"]).content[:8] == b"\x89PNG\r\n\x1a\n"
    assert not np.allclose(outputs[0], outputs[1], atol=1e-3)  # two epochs, two voices
    assert client.get(answer["input_spectrogram_url"]).content[:8] == b"\x89PNG\r\n\x1a\n"
    started = time.perf_counter()
    replay = client.post("/v1/convert", files=files, data={"voices": "demo_e1_s2,demo_e2_s4", "seed": "0"})
    replay_s = time.perf_counter() - started
    assert [r["cached"] for r in replay.json()["results"]] == [True, True]
    assert [r["audio_url"] for r in replay.json()["results"]] == [r["audio_url"] for r in answer["results"]]
    assert replay_s < cold_s
    other = client.post("/v1/convert", files=files, data={"voices": "demo_e1_s2", "seed": "1"}).json()
    assert other["results"][0]["cached"] is False  # other options, another result


@pytest.mark.parametrize(
    "data,status,error",
    [
        ({}, 422, "invalid_options"),
        ({"voices": "voiceA", "run": "demo"}, 422, "invalid_options"),
        ({"run": "nobody"}, 404, "voice_not_found"),
        ({"voices": "voiceA,carol"}, 404, "voice_not_found"),
        ({"voices": ",".join(["voiceA"] * 17)}, 422, "too_many_voices"),
    ],
)
def test_multi_voice_requests_name_their_voices(client, data, status, error):
    files = {"file": ("in.wav", _wav_bytes(_tone(0.3, 220, SR), SR), "audio/wav")}
    response = client.post("/v1/convert", files=files, data=data)
    assert response.status_code == status and response.json()["error"] == error, response.text


def test_a_failing_voice_is_reported_while_the_others_convert(client):
    files = {"file": ("in.wav", _wav_bytes(_tone(0.3, 220, SR), SR), "audio/wav")}
    results = client.post("/v1/convert", files=files, data={"voices": "broken,voiceA"}).json()["results"]
    assert results[0]["error"] == "voice_unavailable" and results[0]["audio_url"] is None
    assert results[1]["error"] is None and client.get(results[1]["audio_url"]).status_code == 200
    assert client.get("/v1/results/" + "0" * 32 + ".wav").json()["error"] == "result_not_found"


def test_the_page_and_its_files_are_served_without_a_key(app_url):
    import httpx

    page = httpx.get(f"{app_url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'src="static/app.js"' in page.text and 'id="api-key"' in page.text and '<base href="/">' in page.text
    assert "MediaRecorder" in httpx.get(f"{app_url}/static/app.js").text
    assert httpx.get(f"{app_url}/static/secret.py").status_code == 404
    options = httpx.get(f"{app_url}/v1/options")
    assert options.status_code == 401  # the API itself still needs the key


# --------------------------------------------------------------------------- voices in a bucket, many clients


@pytest.fixture(scope="module")
def s3_app_url(app_url, s3_server, tmp_path_factory) -> str:
    """A second app on the same Serve instance (route /s3): voices read from a moto S3 bucket, 2 converters."""
    import json
    import os

    import boto3
    from ray import serve

    from rvc_ray import storage
    from rvc_ray.config import load_run_config
    from rvc_ray.serve.app import build_app, build_settings, storage_environment

    bucket = f"serve-voices-{os.getpid()}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    cfg = load_run_config("tiny_cpu", ["serve.num_replicas=2", "serve.cpus_per_replica=0.5", "serve.f0_method=rmvpe"])
    local = tmp_path_factory.mktemp("bucket_voices")
    export_random_voice(
        cfg, local / "cloud_e3_s9.pth", name="cloud", seed=30, extra_info={"f0_method": "fcpe"}, epoch=3, step=9
    )
    write_random_index(local / "cloud.index", cfg.model.content_dim)
    location = f"s3://{bucket}/runs/cloud/voices"
    storage.upload_dir(local, location)
    metrics = {"kind": "epoch", "epoch": 3, "step": 9, "val/mel_l1": 0.5}
    storage.write_text(f"s3://{bucket}/runs/cloud/train/metrics.jsonl", json.dumps(metrics) + "\n")
    settings = build_settings(cfg, location).model_copy(
        update={"voice_cache_dir": tmp_path_factory.mktemp("voice_cache"), "app_name": "rvc-s3", "route_prefix": "/s3"}
    )
    serve.run(
        build_app(settings, storage_environment(location, dict(os.environ))),
        name=settings.app_name,
        route_prefix=settings.route_prefix,
        blocking=False,
    )
    yield f"{app_url}/s3"
    serve.delete(settings.app_name)


def test_voices_are_listed_and_converted_from_a_bucket(s3_app_url):
    import httpx

    listing = httpx.get(f"{s3_app_url}/v1/voices", timeout=60).json()["voices"]
    assert [v["id"] for v in listing] == ["cloud_e3_s9"]
    cloud = listing[0]
    assert (cloud["run"], cloud["epoch"], cloud["step"], cloud["has_index"]) == ("cloud", 3, 9, True)
    assert cloud["validation"] == {"val/mel_l1": 0.5} and cloud["error"] is None
    assert '<base href="/s3/">' in httpx.get(s3_app_url, follow_redirects=True).text  # API calls stay under /s3
    response = httpx.post(
        f"{s3_app_url}/v1/voices/cloud_e3_s9/convert", content=_wav_bytes(_tone(1.0, 220, SR), SR), timeout=120
    )
    wav, rate = _decode(response)
    assert rate == SR and wav.shape == (SR,) and response.headers["x-rvc-used-index"] == "true"


def test_32_concurrent_clients_on_2_converter_replicas_get_no_server_error(s3_app_url):
    import asyncio

    import httpx

    body = _wav_bytes(_tone(0.3, 220, SR), SR)

    async def one(session: httpx.AsyncClient, seed: int) -> int:
        response = await session.post("/v1/voices/cloud_e3_s9/convert", params={"seed": seed}, content=body)
        return response.status_code

    async def all_clients() -> list[int]:
        async with httpx.AsyncClient(base_url=s3_app_url, timeout=120) as session:
            return await asyncio.gather(*(one(session, seed) for seed in range(32)))  # distinct: no cache hits

    statuses = asyncio.run(all_clients())
    assert statuses == [200] * 32, statuses


# --------------------------------------------------------------------------- the page in a real browser


def _chrome(tmp_path: Path):
    import shutil

    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip(
            "headless Chromium is not installed (chromium + chromedriver): scripts/bootstrap.sh installs them "
            "with apt when run as root or with sudo"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--autoplay-policy=no-user-gesture-required",
        "--use-fake-device-for-media-stream",  # a synthetic microphone (a beep), for the record button
        "--use-fake-ui-for-media-stream",
        "--window-size=1400,1100",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=options)


_AUDIO_CHECK = """
const done = arguments[arguments.length - 1];
const audios = [...document.querySelectorAll('.card.result audio')];
const check = async (a) => {
  if (a.readyState < 1) await new Promise((r, j) => { a.addEventListener('loadedmetadata', r, {once: true});
                                                       a.addEventListener('error', () => j(new Error('audio error')), {once: true}); });
  const head = new Uint8Array(await (await fetch(a.src)).arrayBuffer()).slice(0, 12);
  a.muted = true; await a.play(); a.pause();
  return {voice: a.closest('.card').dataset.voice, duration: a.duration,
          riff: String.fromCharCode(...head.slice(0, 4)) + String.fromCharCode(...head.slice(8, 12))};
};
Promise.all(audios.map(check)).then(done, (e) => done({error: String(e)}));
"""


def test_the_page_converts_with_two_epochs_in_headless_chromium(app_url, tmp_path):
    import shutil

    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    upload = tmp_path / "sung.wav"
    sf.write(upload, _tone(1.5, 220, 22050), 22050, subtype="PCM_16")
    driver = _chrome(tmp_path)
    try:
        driver.set_script_timeout(60)
        wait = WebDriverWait(driver, 60)
        driver.get(f"{app_url}/")
        wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())  # no key yet: a readable error
        assert driver.find_element(By.ID, "error").text.startswith("unauthorized: missing or wrong API key")
        driver.find_element(By.ID, "api-key").send_keys(API_KEY, Keys.TAB)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'button.select-run[data-run="demo"]'))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#options input[name="f0_up_key"]'))
        assert not driver.find_element(By.ID, "error").is_displayed()
        driver.find_element(By.ID, "record").click()  # the microphone path: MediaRecorder -> WAV in the page
        time.sleep(1.2)
        driver.find_element(By.ID, "record").click()
        recorded = driver.execute_async_script(
            "const done = arguments[arguments.length - 1]; const a = document.getElementById('input-audio');"
            "const ready = () => done({duration: a.duration, type: a.src.slice(0, 5)});"
            "const wait = () => (a.src && a.readyState >= 1) ? ready() : setTimeout(wait, 100); wait();"
        )
        assert recorded["type"] == "blob:" and 0.5 < recorded["duration"] < 3.0, recorded
        driver.find_element(By.ID, "file").send_keys(str(upload))
        driver.find_element(By.CSS_SELECTOR, 'button.select-run[data-run="demo"]').click()
        driver.find_element(By.ID, "convert").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text.startswith(("done", "failed")))
        assert driver.find_element(By.ID, "status").text.startswith("done"), driver.find_element(By.ID, "error").text
        checked = driver.execute_async_script(_AUDIO_CHECK)
        assert isinstance(checked, list), checked
        assert [c["voice"] for c in checked] == ["demo_e1_s2", "demo_e2_s4"]
        for item in checked:
            assert item["riff"] == "RIFFWAVE" and item["duration"] == pytest.approx(1.5, abs=0.01), item
        scores = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".card.result .meta")]
        assert any(f"{DEMO_SCORES[1]:.3f}" in s for s in scores) and any(f"{DEMO_SCORES[2]:.3f}" in s for s in scores)
        wait.until(
            lambda d: d.execute_script(
                "return [...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)"
            )
        )
        assert len(driver.find_elements(By.CSS_SELECTOR, ".card img")) == 3  # input + two epochs
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, min(int(height) + 120, 4000))  # the whole page, results included
        shot = tmp_path / "serve_page.png"
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    artifacts = Path(__file__).resolve().parents[2] / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shutil.copyfile(shot, artifacts / shot.name)
    print(f"screenshot of the listening page: {shot} (copied to {artifacts / shot.name})")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
