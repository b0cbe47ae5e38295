"""GPU benchmarks (what ``scripts/gpu_check.sh`` runs after the ``gpu`` tests); one JSON line each.

Usage: ``python benchmarks/bench_gpu.py [--batches 8,16,32] [--precisions fp32,bf16] [--clip-s 3.0]
[--steps 5] [--skip-ray] [--auto-batch]``. Needs a CUDA GPU.

* ``hardware``: the GPU, its memory and datasheet peak (``benchmarks/hardware_peak.py``);
* ``train_step`` for the 40k preset per precision and per-GPU batch: median step time, samples/s, peak GPU
  memory, FLOPs per step and the fraction of the peak; ``bf16_speedup`` per batch (target: >= 1.8x at 16);
* ``ray_overhead``: the step inside a one-GPU Ray Train fit against the bare step (target: < 3 %);
* ``extract_stage``: audio seconds per second of each pitch method (fcpe, crepe-tiny, crepe, rmvpe with
  random weights: same compute as the real ones) and of the content encoder (HuBERT-base shaped, random);
* ``convert``: the real-time factor of a 10 s conversion with a 40k voice on the GPU;
* ``auto_batch`` (``--auto-batch``): the global batch ``train.batch_size=auto`` finds for the 40k preset.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for tests/voices.py
from bench_model import count_step_flops, make_batch, measure_ray_overhead, time_steps  # noqa: E402
from hardware_peak import describe_gpu, fraction_of_peak  # noqa: E402

_STDOUT = sys.stdout  # JSON lines only: main() sends everything else printed (libraries' notes) to stderr


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), file=_STDOUT, flush=True)


def bench_training(args: argparse.Namespace, peak: dict[str, float]) -> dict[tuple[str, int], float]:
    import torch

    from rvc_ray.config import load_run_config

    cfg = load_run_config("rvc_v2_40k")
    device = torch.device("cuda")
    medians: dict[tuple[str, int], float] = {}
    for batch_size in (int(b) for b in args.batches.split(",")):
        batch = make_batch(cfg, batch_size, int(round(args.clip_s * 100))).to(device)
        flops = count_step_flops(cfg, batch, device)
        for precision in args.precisions.split(","):
            try:
                run = time_steps(cfg, batch, device, precision, args.warmup, args.steps)
            except torch.OutOfMemoryError as exc:
                _emit(
                    {
                        "bench": "train_step",
                        "precision": precision,
                        "batch_per_gpu": batch_size,
                        "error": str(exc)[:200],
                    }
                )
                torch.cuda.empty_cache()
                continue
            median = statistics.median(run["times"])
            medians[(precision, batch_size)] = median
            key = "bf16" if precision in ("bf16", "fp16") else "fp32"
            _emit(
                {
                    "bench": "train_step",
                    "preset": "rvc_v2_40k",
                    "precision": precision,
                    "batch_per_gpu": batch_size,
                    "clip_s": args.clip_s,
                    "median_s": round(median, 4),
                    "samples_per_s": round(batch_size / median, 2),
                    "peak_gpu_memory_gib": run["peak_gpu_memory_gib"],
                    "gflop_per_step": round(flops / 1e9, 1),
                    "fraction_of_peak": fraction_of_peak(flops, median, peak.get(key)),
                    "fraction_of_tf32_peak": fraction_of_peak(flops, median, peak.get("tf32"))
                    if key == "fp32"
                    else None,
                    "loss_g_mel": [round(v, 4) for v in run["mel"]],
                }
            )
            del run
            torch.cuda.empty_cache()
        if ("fp32", batch_size) in medians and ("bf16", batch_size) in medians:
            speedup = medians[("fp32", batch_size)] / medians[("bf16", batch_size)]
            _emit({"bench": "bf16_speedup", "batch_per_gpu": batch_size, "fp32_over_bf16": round(speedup, 3)})
    return medians


def bench_extraction(args: argparse.Namespace) -> None:
    import numpy as np
    import pyarrow as pa
    import torch

    from rvc_ray.config import load_run_config
    from rvc_ray.features.rmvpe import build_rmvpe_network
    from rvc_ray.features.stages import ContentStage, PitchStage

    seconds = [args.clip_s] * args.extract_segments
    rng = np.random.default_rng(0)

    def tone(rate: int) -> list[np.ndarray]:
        t = np.arange(int(args.clip_s * rate)) / rate
        return [
            (0.3 * np.sin(2 * np.pi * (120 + 20 * i) * t) + 0.003 * rng.standard_normal(t.shape)).astype(np.float32)
            for i in range(len(seconds))
        ]

    with tempfile.TemporaryDirectory(prefix="rvc-bench-gpu-") as tmp:
        rmvpe = Path(tmp) / "rmvpe.pt"
        torch.save({k: v.half() for k, v in build_rmvpe_network().state_dict().items()}, rmvpe)
        base = ["features.content_encoder_path=null", f"features.rmvpe_path={rmvpe}"]
        cfg = load_run_config("rvc_v2_40k", [*base, "features.f0_method=fcpe"])
        batch = pa.table(
            {
                "segment_id": [f"0_{i:05d}_0000" for i in range(len(seconds))],
                "speaker_id": [0] * len(seconds),
                "wav": pa.array(tone(cfg.audio.sample_rate), pa.list_(pa.float32())),
                "wav_16k": pa.array(tone(16000), pa.list_(pa.float32())),
                "is_mute": [False] * len(seconds),
            }
        )
        audio_s = sum(seconds)
        with_f0 = None
        for method in ("fcpe", "crepe-tiny", "crepe", "rmvpe"):
            stage = PitchStage(
                load_run_config("rvc_v2_40k", [*base, f"features.f0_method={method}"]).model_dump(mode="json"),
                device="cuda",
            )
            stage(batch.slice(0, 1))  # warm-up
            torch.cuda.synchronize()
            started = time.perf_counter()
            out = stage(batch)
            torch.cuda.synchronize()
            wall = time.perf_counter() - started
            with_f0 = out if method == "fcpe" else with_f0
            _emit(
                {
                    "bench": "extract_stage",
                    "stage": f"pitch/{method}",
                    "segments": len(seconds),
                    "audio_s_per_s": round(audio_s / wall, 1),
                }
            )
        content = ContentStage(cfg.model_dump(mode="json"), device="cuda")
        content(with_f0.slice(0, 1))
        torch.cuda.synchronize()
        started = time.perf_counter()
        content(with_f0)
        torch.cuda.synchronize()
        _emit(
            {
                "bench": "extract_stage",
                "stage": "content/hubert-base-random",
                "segments": len(seconds),
                "audio_s_per_s": round(audio_s / (time.perf_counter() - started), 1),
            }
        )


def bench_conversion() -> None:
    import numpy as np

    from rvc_ray.config import load_run_config
    from rvc_ray.inference.analysis import AnalysisModels
    from rvc_ray.inference.converter import VoiceConverterPipeline
    from rvc_ray.inference.options import ConversionOptions
    from tests.voices import export_random_voice

    cfg = load_run_config("rvc_v2_40k", ["features.content_encoder_path=null", "features.f0_method=fcpe"])
    with tempfile.TemporaryDirectory(prefix="rvc-bench-convert-") as tmp:
        voice = export_random_voice(cfg, Path(tmp) / "v.pth", name="v")
        pipeline = VoiceConverterPipeline.from_files(
            voice, None, AnalysisModels(cfg.features, device="cuda"), configured_f0_method="fcpe", device="cuda"
        )
        tone = (0.3 * np.sin(2 * np.pi * 180 * np.arange(160_000) / 16_000)).astype(np.float32)
        pipeline.convert(tone[:16_000], ConversionOptions(seed=0))  # warm-up
        started = time.perf_counter()
        result = pipeline.convert(tone, ConversionOptions(seed=0))
        wall = time.perf_counter() - started
    _emit(
        {
            "bench": "convert",
            "device": "cuda",
            "audio_s": 10.0,
            "wall_s": round(wall, 3),
            "real_time_factor": round(wall / 10.0, 4),
            "reported_rtf": result.report.real_time_factor,
            "timings_s": result.report.timings_s,
        }
    )


def bench_auto_batch() -> None:
    import torch

    from rvc_ray.config import load_run_config
    from rvc_ray.data.dataset import TrainingItems, load_feature_table, write_synthetic_feature_table
    from rvc_ray.train.memory import make_probe_step, resolve_auto_batch_size
    from rvc_ray.train.steps import StepSettings

    cfg = load_run_config("rvc_v2_40k", ["scaling.use_gpu=true", "scaling.num_workers=1"])
    with tempfile.TemporaryDirectory(prefix="rvc-bench-auto-") as tmp:
        write_synthetic_feature_table(Path(tmp), content_dim=768, sample_rate=40000, frames=[300] * 4)
        items = TrainingItems(load_feature_table(Path(tmp), "train", hop_length=400), cfg.audio, max_frames=900)
        settings = StepSettings.from_config(cfg, torch.device("cuda"))
        started = time.perf_counter()
        probe = make_probe_step(cfg, items, settings, min_frames=4)
        found = resolve_auto_batch_size(
            probe, device="cuda", world_size=1, global_limit=512, min_across_workers=lambda v, d: v
        )
    _emit(
        {
            "bench": "auto_batch",
            "preset": "rvc_v2_40k",
            "clip_frames": 300,
            "precision": settings.precision,
            "per_gpu_batch": found,
            "search_s": round(time.perf_counter() - started, 1),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="8,16,32")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--clip-s", type=float, default=3.0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--extract-segments", type=int, default=16)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--auto-batch", action="store_true")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (torch.cuda.is_available() is False)")
    hardware = describe_gpu()
    _emit({"bench": "hardware", **hardware})
    medians = bench_training(args, hardware["peak_gflops"])
    if not args.skip_ray and ("bf16", 16) in medians:
        ray_args = argparse.Namespace(
            preset="rvc_v2_40k", steps=args.steps, clip_s=args.clip_s, ray_precision="bf16", batch=16, threads=4
        )
        _emit(measure_ray_overhead(None, ray_args, medians[("bf16", 16)], use_gpu=True))
    bench_extraction(args)
    bench_conversion()
    if args.auto_batch:
        bench_auto_batch()


if __name__ == "__main__":
    with contextlib.redirect_stdout(sys.stderr):
        main()
