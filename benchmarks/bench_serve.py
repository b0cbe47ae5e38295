"""Voice-conversion speed: real-time factor offline (fp32 vs auto precision, optionally vs Applio) and
HTTP latency/throughput under concurrent clients.

Uses the full RVC v2 40 kHz preset with random weights and a HuBERT-base-size random content encoder
(the compute of a real voice; the audio is meaningless), F0 by ``fcpe`` (bundled weights), on CPU:

1. offline: the pipeline converts ``--seconds`` (10) of a sung-vowel-like tone after a warm-up, with
   ``precision=fp32`` and ``precision=auto`` (bf16 synthesis where the CPU has AVX512-BF16/AMX),
   interleaved ``--repeats`` times (the fastest run reported, with every run's time); the real-time factor is processing time / audio
   duration (< 1 = faster than real time), per stage, also from CPU time (robust to other jobs); the
   auto output's distance from fp32 (SNR, max abs difference of the waveform) is the tolerance figure;
2. with ``--applio DIR`` (an Applio checkout, imported at run time, never copied): Applio's
   ``Pipeline.pipeline`` on the same voice file, input, encoder network, F0 method and settings;
3. served: the app is started on 127.0.0.1 (a free port) and ``--short`` (1 s) requests are sent by
   1, 4 and 16 concurrent clients, each level bounded by ``--requests`` and ``--level-timeout-s``.

    python benchmarks/bench_serve.py --skip-served --applio /work/applio     # offline, side by side
    python benchmarks/bench_serve.py                 # ~3-6 min on 2 cores
    python benchmarks/bench_serve.py --quick         # tiny preset, a smoke run

Prints progress to stderr and one JSON line with every number to stdout (with the load average).
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
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.voices import export_random_voice  # noqa: E402  (the test suite's tiny random voice)


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


def _distance(reference: np.ndarray, other: np.ndarray) -> dict:
    """How far ``other`` is from ``reference`` (same seed, same input): SNR and max abs difference of the waveform."""
    n = min(len(reference), len(other))
    reference, other = reference[:n].astype(np.float64), other[:n].astype(np.float64)
    noise = float(np.mean((reference - other) ** 2))
    snr = 10 * np.log10(float(np.mean(reference**2)) / max(noise, 1e-20))
    return {"snr_db": round(float(snr), 2), "max_abs_diff": round(float(np.max(np.abs(reference - other))), 5)}


def _offline(cfg, voice_path: Path, seconds: float, threads: int, repeats: int, applio: Path | None) -> dict:
    import torch

    from rvc_ray.inference.analysis import AnalysisModels
    from rvc_ray.inference.converter import VoiceConverterPipeline
    from rvc_ray.inference.options import ConversionOptions

    torch.set_num_threads(threads)
    analysis = AnalysisModels(cfg.features)
    variants = {}
    for precision in ("fp32", "auto"):
        started = time.perf_counter()
        variants[precision] = VoiceConverterPipeline.from_files(
            voice_path, None, analysis, configured_f0_method="fcpe", precision=precision
        )
        load_s = time.perf_counter() - started
    options = ConversionOptions(seed=0, index_rate=0.0)
    for pipeline in variants.values():
        pipeline.convert(_tone(1.0), options)  # warm-up: builds the encoder and F0 extractor
    runners = {name: (lambda p=p: p.convert(_tone(seconds), options)) for name, p in variants.items()}
    if applio is not None:
        runners["applio"] = _applio_runner(applio, voice_path, variants["fp32"], seconds, options)
        runners["applio"]()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runners}
    cpu_times: dict[str, list[float]] = {name: [] for name in runners}
    outputs: dict[str, np.ndarray] = {}
    stages: dict[str, dict] = {}
    for repeat in range(repeats):
        for name, run in runners.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            result = run()
            times[name].append(time.perf_counter() - started)
            cpu_times[name].append(time.process_time() - cpu_started)
            wav = result.wav if hasattr(result, "wav") else result
            outputs[name] = wav
            if hasattr(result, "report"):
                stages[name] = result.report.timings_s
            _log(
                f"offline {name} #{repeat}: {seconds:g} s in {times[name][-1]:.2f} s wall, "
                f"{cpu_times[name][-1]:.2f} s CPU (load {os.getloadavg()[0]:.1f})"
            )
    out: dict = {
        "audio_s": seconds,
        "torch_threads": threads,
        "voice_load_s": round(load_s, 3),
        "cpu_bf16": variants["auto"].autocast_dtype == "bfloat16",
        "auto_synthesis_dtype": variants["auto"].autocast_dtype or "float32",
        "repeats": repeats,
    }
    for name, values in times.items():
        best = min(values)  # the least disturbed run: other jobs only ever add time
        cpu = min(cpu_times[name])
        out[name] = {
            "processing_s": round(best, 3),
            "real_time_factor": round(best / seconds, 3),
            "runs_s": [round(v, 2) for v in values],
            "cpu_s": round(cpu, 3),
            # CPU seconds spread over the threads: the wall time this would take on `threads` idle cores
            # (an estimate that ignores imperfect parallelism; robust to other jobs on a shared machine)
            "cpu_real_time_factor_per_thread": round(cpu / threads / seconds, 3),
        }
        if name in stages:
            out[name]["stages_s"] = stages[name]
    out["auto_vs_fp32"] = _distance(outputs["fp32"], outputs["auto"])
    for other in ("fp32", "applio") if applio is not None else ("fp32",):
        for measure in ("processing_s", "cpu_s"):
            out[f"speedup_auto_over_{other}_{measure}"] = round(out[other][measure] / out["auto"][measure], 3)
    return out


def _applio_runner(applio: Path, voice_path: Path, reference, seconds: float, options) -> Callable[[], np.ndarray]:
    """Applio's conversion (``rvc.infer.pipeline.Pipeline``), set up as its ``VoiceConverter.setup_network`` does.

    The same voice file, input, F0 method (fcpe, torchfcpe's bundled weights, which is what Applio's
    ``fcpe.pt`` holds) and settings (transpose 0, no index, protect 0.33, volume envelope = rms_mix_rate
    0.25); the content encoder is the same network object rvc-ray uses (Applio's ``HubertModelWithFinalProj``
    is the same HuBERT-base architecture), its output handed over by name as transformers returns it.
    """
    from types import SimpleNamespace

    import torch

    from rvc_ray.features.pitch import _torchaudio_stand_in, import_torchcrepe, import_torchfcpe

    torchfcpe = import_torchfcpe()
    import_torchcrepe()
    sys.path.insert(0, str(applio))
    with _torchaudio_stand_in():
        from rvc.infer.pipeline import Pipeline
        from rvc.lib.algorithm.synthesizers import Synthesizer
    # Applio loads "rvc/models/predictors/fcpe.pt" relative to its working directory: give it the same
    # weights torchfcpe bundles, in a scratch directory.
    scratch = Path(tempfile.mkdtemp(prefix="bench_applio_"))
    bundled = next((Path(torchfcpe.__file__).parent / "assets").glob("*.pt"))
    (scratch / "rvc" / "models" / "predictors").mkdir(parents=True)
    os.symlink(bundled, scratch / "rvc" / "models" / "predictors" / "fcpe.pt")
    cpt = torch.load(voice_path, map_location="cpu", weights_only=True)
    cpt["config"][-3] = cpt["weight"]["emb_g.weight"].shape[0]
    net_g = Synthesizer(*cpt["config"], use_f0=cpt.get("f0", 1), text_enc_hidden_dim=768, vocoder="HiFi-GAN")
    del net_g.enc_q
    net_g.load_state_dict(cpt["weight"], strict=False)
    net_g = net_g.float().eval()
    network = reference.analysis.content_encoder(reference.encoder_spec, "bench").network

    class EncoderAsTransformersReturnsIt(torch.nn.Module):  # Applio reads model(wav)["last_hidden_state"]
        def __init__(self) -> None:
            super().__init__()
            self.network, self.final_proj = network, network.final_proj

        def forward(self, wav: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"last_hidden_state": self.network(wav)}

    encoder = EncoderAsTransformersReturnsIt().eval()
    config = SimpleNamespace(x_pad=1, x_query=6, x_center=38, x_max=41, device="cpu")
    vc = Pipeline(int(cpt["config"][-1]), config)
    audio = _tone(seconds)
    audio = audio / max(1.0, float(np.abs(audio).max()) / 0.95)

    def run() -> np.ndarray:
        cwd = os.getcwd()
        os.chdir(scratch)
        try:
            return vc.pipeline(
                model=encoder, net_g=net_g, sid=0, audio=audio.copy(), pitch=0, f0_method="fcpe", file_index="",
                index_rate=0.0, pitch_guidance=True, volume_envelope=options.rms_mix_rate, version="v2",
                protect=options.protect, f0_autotune=False, f0_autotune_strength=1.0, proposed_pitch=False,
                proposed_pitch_threshold=155.0,
            )  # fmt: skip
        finally:
            os.chdir(cwd)

    return run


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
    url = f"http://{settings.serve.host}:{settings.serve.port}/v1/voices/bench/convert"
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
    parser.add_argument("--repeats", type=int, default=2, help="offline runs per variant (fastest reported)")
    parser.add_argument("--applio", type=Path, default=None, help="an Applio checkout to compare with offline")
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
        export_random_voice(cfg, voices / "bench.pth", epoch=0, step=0)
        out["offline"] = _offline(
            cfg, voices / "bench.pth", args.seconds, max(1, int(args.cpus_per_replica)), args.repeats, args.applio
        )
        if not args.skip_served:
            out["served"] = _served(cfg, voices, args.short, args.clients, args.requests, args.level_timeout_s)
    out["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
