"""Benchmark the full RVC v2 40k model on CPU: one training step (D + G) and a 10 s inference forward.

Usage: ``.venv/bin/python benchmarks/bench_model.py [--batch 4] [--clip-s 3.0] [--threads 2] [--warmup 2]
[--steps 5] [--precision fp32|bf16] [--preset rvc_v2_40k]``. Prints one JSON line per measurement.

Compares with the Applio anchor of /work/shared/docs/baselines.md §4 (same shapes: batch 4 of 3.0 s clips,
40 kHz, 2 threads, fp32, AdamW): median 12.81 s per step, peak RSS 4.81 GiB. Each step also records the
CPU time used by other processes (from /proc/stat) so a busy machine shows up in the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import time

APPLIO_STEP_S = 12.81
APPLIO_PEAK_GIB = 4.81


def _busy_cpu_s() -> float | None:
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _make_batch(cfg, batch: int, frames: int):
    import torch

    from rvc_ray.audio.spectral import compute_linear_spectrogram
    from rvc_ray.data.batch import RVCBatch

    a = cfg.audio
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(frames * a.hop_length) / a.sample_rate
    f0 = 100.0 + 150.0 * torch.rand(batch, 1, generator=gen)
    wav = 0.3 * torch.sin(2 * math.pi * f0 * t) + 0.01 * torch.randn(batch, t.numel(), generator=gen)
    lengths = torch.full((batch,), frames)
    f0_hz = f0.expand(batch, frames).clone()
    mel = 1127.0 * torch.log(1 + f0_hz / 700.0)
    lo, hi = 1127.0 * math.log(1 + 50 / 700), 1127.0 * math.log(1 + 1100 / 700)
    bins = torch.round((mel - lo) * 254 / (hi - lo) + 1).clamp(1, 255).long()
    spec = compute_linear_spectrogram(wav, a.n_fft, a.hop_length, a.win_length)
    content = torch.randn(batch, frames // 2, cfg.model.content_dim, generator=gen).repeat_interleave(2, dim=1)
    return RVCBatch(
        content,
        lengths,
        bins,
        f0_hz,
        spec,
        lengths.clone(),
        wav[:, None],
        lengths * a.hop_length,
        torch.zeros(batch, dtype=torch.long),
    )


def bench_train_step(cfg, args) -> dict:
    import torch

    from rvc_ray.model.build import build_discriminator, build_generator
    from rvc_ray.train.steps import StepSettings, build_optimizers, train_step

    torch.manual_seed(1234)
    gen, disc = build_generator(cfg.model, cfg.audio), build_discriminator(cfg.model)
    opt_g, opt_d = build_optimizers(gen, disc, cfg.optim)
    settings = StepSettings.from_config(cfg)
    frames = int(round(args.clip_s * 100))
    batch = _make_batch(cfg, args.batch, frames)
    for _ in range(args.warmup):
        train_step(gen, disc, opt_g, opt_d, batch, settings)
    times, foreign, own = [], [], []
    for _ in range(args.steps):
        busy0, own0, wall0 = _busy_cpu_s(), _own_cpu_s(), time.perf_counter()
        metrics = train_step(gen, disc, opt_g, opt_d, batch, settings)
        wall = time.perf_counter() - wall0
        busy1, own1 = _busy_cpu_s(), _own_cpu_s()
        times.append(wall)
        own.append(own1 - own0)
        if busy0 is not None and busy1 is not None:
            foreign.append(max(0.0, (busy1 - busy0) - (own1 - own0)))
    median = statistics.median(times)
    peak = _peak_rss_gib()
    return {
        "bench": "train_step",
        "preset": args.preset,
        "precision": cfg.train.precision,
        "batch": args.batch,
        "clip_s": args.clip_s,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "median_s": round(median, 3),
        "min_s": round(min(times), 3),
        "max_s": round(max(times), 3),
        "foreign_cpu_s_per_step": [round(f, 2) for f in foreign],
        "own_cpu_s_median": round(statistics.median(own), 2),
        "peak_rss_gib": round(peak, 3),
        "generator_params": sum(p.numel() for p in gen.parameters()),
        "discriminator_params": sum(p.numel() for p in disc.parameters()),
        "ratio_vs_applio_step": round(median / APPLIO_STEP_S, 3),
        "ratio_vs_applio_peak_rss": round(peak / APPLIO_PEAK_GIB, 3),
        "final_loss_g_mel": round(metrics.get("loss/g/mel", float("nan")), 4),
    }


def bench_inference(cfg, args) -> dict:
    import torch

    from rvc_ray.model.build import build_generator

    torch.manual_seed(1234)
    gen = build_generator(cfg.model, cfg.audio, with_posterior_encoder=False).eval()
    frames = int(round(args.infer_s * 100))
    batch = _make_batch(cfg, 1, frames)
    noise = torch.Generator().manual_seed(0)
    times, foreign = [], []
    with torch.inference_mode():
        for i in range(args.infer_runs + 1):
            busy0, own0 = _busy_cpu_s(), _own_cpu_s()
            started = time.perf_counter()
            wav = gen.infer(
                batch.content, batch.content_lengths, batch.pitch_bins, batch.f0_hz, batch.speaker_id, generator=noise
            )
            if i:  # the first run is a warm-up
                times.append(time.perf_counter() - started)
                busy1, own1 = _busy_cpu_s(), _own_cpu_s()
                if busy0 is not None and busy1 is not None:
                    foreign.append(round(max(0.0, (busy1 - busy0) - (own1 - own0)), 2))
    median = statistics.median(times)
    return {
        "bench": "infer",
        "preset": args.preset,
        "audio_s": args.infer_s,
        "threads": torch.get_num_threads(),
        "output_samples": int(wav.shape[-1]),
        "median_s": round(median, 3),
        "real_time_factor": round(median / args.infer_s, 4),
        "foreign_cpu_s_per_run": foreign,
        "inference_generator_params": sum(p.numel() for p in gen.parameters()),
        "peak_rss_gib": round(_peak_rss_gib(), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="rvc_v2_40k")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--clip-s", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--infer-s", type=float, default=10.0)
    parser.add_argument("--infer-runs", type=int, default=3)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()

    import torch

    from rvc_ray.config import load_run_config

    torch.set_num_threads(args.threads)
    cfg = load_run_config(args.preset, [f"train.precision={args.precision}"])
    if not args.skip_train:
        print(json.dumps(bench_train_step(cfg, args)), flush=True)
    print(json.dumps(bench_inference(cfg, args)), flush=True)


if __name__ == "__main__":
    main()
