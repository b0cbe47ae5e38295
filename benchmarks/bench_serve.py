"""Voice-conversion speed: real-time factor offline and HTTP latency/throughput under concurrent clients.

Uses the full RVC v2 40 kHz preset with random weights and a HuBERT-base-size random content encoder
(the compute of a real voice; the audio is meaningless), F0 by ``fcpe`` (bundled weights), on CPU:

1. offline: the pipeline converts ``--seconds`` (10) of a sung-vowel-like tone, after a warm-up; the
   real-time factor is processing time / audio duration (< 1 = faster than real time), per stage;
2. served: the app is started on 127.0.0.1 (a free port) and ``--short`` (1 s) requests are sent by
   1, 4 and 16 concurrent clients, each level bounded by ``--requests`` and ``--level-timeout-s``.

    python benchmarks/bench_serve.py                 # ~3-6 min on 2 cores
    python benchmarks/bench_serve.py --quick         # tiny preset, a smoke run

Prints progress to stderr and one JSON line with every number to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _log(message: str) -> None:
    print(f"[bench_serve] {message}", file=sys.stderr, flush=True)


def _tone(seconds: float, rate: int = 16000, hz: float = 196.0) -> np.ndarray:
    """A vowel-like test signal: harmonics with vibrato and a syllable envelope."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = hz * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    wav = sum(0.3 / k * np.sin(k * phase) for k in range(1, 6))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 2 * t) ** 2
    return (wav * envelope).astype(np.float32)


def _wav_bytes(wav: np.ndarray, rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wav, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _export_random_voice(cfg, path: Path) -> None:
    import torch

    from rvc_ray.features.content import describe_content_encoder
    from rvc_ray.model.build import build_generator
    from rvc_ray.model.export import export_voice

    torch.manual_seed(0)
    generator = build_generator(cfg.model, cfg.audio)
    info = {"content_encoder": describe_content_encoder(cfg.features, cfg.model).to_json()}
    export_voice(generator.state_dict(), cfg.model, cfg.audio, path, epoch=0, step=0, name=path.stem, extra_info=info)


def _offline(cfg, voice_path: Path, seconds: float, threads: int) -> dict:
    import torch

    from rvc_ray.infer import ConversionOptions, VoiceConverterPipeline
    from rvc_ray.inference.analysis import AnalysisModels

    torch.set_num_threads(threads)
    analysis = AnalysisModels(cfg.features)
    started = time.perf_counter()
    pipeline = VoiceConverterPipeline.from_files(voice_path, None, analysis, configured_f0_method=cfg.serve.f0_method)
    load_s = time.perf_counter() - started
    options = ConversionOptions(seed=0)
    started = time.perf_counter()
    pipeline.convert(_tone(1.0), options)  # warm-up: builds the encoder and F0 extractor
    warmup_s = time.perf_counter() - started
    result = pipeline.convert(_tone(seconds), options)
    report = result.report
    _log(f"offline: {seconds:g} s in {report.processing_s:.2f} s, RTF {report.real_time_factor:.3f} {report.timings_s}")
    return {
        "audio_s": seconds,
        "processing_s": report.processing_s,
        "real_time_factor": report.real_time_factor,
        "stages_s": report.timings_s,
        "voice_load_s": round(load_s, 3),
        "first_conversion_s": round(warmup_s, 3),
        "torch_threads": threads,
    }


async def _level(url: str, body: bytes, clients: int, max_requests: int, timeout_s: float) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    timeouts = 0
    issued = 0
    deadline = time.perf_counter() + timeout_s

    async def worker(session: httpx.AsyncClient) -> None:
        nonlocal issued, errors, timeouts
        while issued < max_requests and time.perf_counter() < deadline:
            issued += 1
            started = time.perf_counter()
            try:
                response = await session.post(
                    url, content=body, headers={"Content-Type": "audio/wav"}, params={"seed": 0}
                )
                ok = response.status_code == 200
            except httpx.TimeoutException:  # queued longer than the level's time cap
                timeouts += 1
                continue
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=timeout_s) as session:
        await asyncio.gather(*(worker(session) for _ in range(clients)))
    wall = time.perf_counter() - started
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "clients": clients,
        "completed": len(latencies),
        "errors": errors,
        "client_timeouts": timeouts,
        "wall_s": round(wall, 3),
        "throughput_rps": round(len(latencies) / wall, 3),
        "p50_s": round(float(np.percentile(lat, 50)), 3),
        "p90_s": round(float(np.percentile(lat, 90)), 3),
        "p99_s": round(float(np.percentile(lat, 99)), 3),
        "max_s": round(float(np.max(lat)), 3),
    }


def _served(cfg, voices_dir: Path, short_s: float, levels: list[int], requests: list[int], timeout_s: float) -> dict:
    import httpx
    import ray
    from ray import serve

    from rvc_ray.serve.app import run_serve

    started = time.perf_counter()
    ray.init(
        num_cpus=max(4, os.cpu_count() or 1),
        include_dashboard=False,
        logging_config=ray.LoggingConfig(log_level="WARNING"),
    )
    settings = run_serve(cfg, voices_dir=voices_dir, blocking=False)
    startup_s = time.perf_counter() - started
    url = f"http://{settings.host}:{settings.port}/v1/voices/bench/convert"
    body = _wav_bytes(_tone(short_s), 16000)
    try:
        started = time.perf_counter()
        first = httpx.post(url, content=body, headers={"Content-Type": "audio/wav"}, timeout=600)
        first.raise_for_status()
        cold_s = time.perf_counter() - started
        _log(f"served: startup {startup_s:.1f} s, first (cold) request {cold_s:.2f} s")
        results = []
        for clients, count in zip(levels, requests, strict=True):
            level = asyncio.run(_level(url, body, clients, count, timeout_s))
            _log(f"served: {level}")
            results.append(level)
    finally:
        serve.shutdown()
        ray.shutdown()
    return {
        "startup_s": round(startup_s, 2),
        "cold_request_s": round(cold_s, 3),
        "request_audio_s": short_s,
        "levels": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="offline input duration (RTF)")
    parser.add_argument("--short", type=float, default=1.0, help="duration of a served request")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, nargs="+", default=[6, 12, 32], help="request cap per level")
    parser.add_argument("--level-timeout-s", type=float, default=90.0, help="time cap per level")
    parser.add_argument("--cpus-per-replica", type=float, default=2.0)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--f0-method", default="fcpe")
    parser.add_argument("--quick", action="store_true", help="tiny preset (smoke test of the script)")
    parser.add_argument("--skip-served", action="store_true")
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from rvc_ray.config import load_run_config

    preset = "tiny_cpu" if args.quick else "rvc_v2_40k"
    overrides = [
        f"features.f0_method={args.f0_method}",
        f"serve.f0_method={args.f0_method}",
        f"serve.port={_free_port()}",
        f"serve.cpus_per_replica={args.cpus_per_replica}",
        f"serve.num_replicas={args.replicas}",
        "serve.max_duration_s=600",
    ]
    if not args.quick:
        overrides.append("features.random_encoder_size=base")
    cfg = load_run_config(preset, overrides)
    out: dict = {
        "bench": "serve",
        "preset": preset,
        "f0_method": args.f0_method,
        "cpu_count": os.cpu_count(),
        "load_avg_start": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        voices = Path(tmp)
        _export_random_voice(cfg, voices / "bench.pth")
        out["offline"] = _offline(cfg, voices / "bench.pth", args.seconds, max(1, int(args.cpus_per_replica)))
        if not args.skip_served:
            out["served"] = _served(cfg, voices, args.short, args.clients, args.requests, args.level_timeout_s)
    out["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
