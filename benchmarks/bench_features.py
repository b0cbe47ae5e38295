"""Feature-extraction throughput per stage: each F0 method and the content encoder, on CPU.

Prints one JSON line per measurement: audio seconds per wall second (median of ``--repeats`` timed
passes after one warm-up on the first 5 s), peak RSS, and the CPU seconds that *other* processes used
meanwhile (``foreign_cpu_s``, from /proc/stat) so that runs on a shared machine can be judged.
Compare with docs/applio-baselines.md §3 (Applio's torchcrepe harness on 60 s of speech, 2 threads).

    .venv/bin/python benchmarks/bench_features.py                      # all stages, 60 s (crepe full: 10 s)
    .venv/bin/python benchmarks/bench_features.py --stages fcpe content-base --seconds 30

Input: the demo corpus (speaker 0) resampled to 16 kHz with soxr, cut to ``--seconds``. F0 methods run
on the whole clip (as the baseline); content encoders on consecutive 3.7 s pieces, as the pipeline feeds them.
RMVPE runs with random weights (no rmvpe.pt here): its speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

# Applio on this machine (docs/applio-baselines.md §3, set B medians, 60 s of speech, 2 threads): audio-s per wall-s.
APPLIO_AUDIO_S_PER_S = {"crepe-tiny": 60.0 / 11.52, "crepe": 60.0 / 218.1}
SEGMENT_S = 3.7  # content is encoded per preprocessed segment (attention cost grows with length)
STAGES = ("fcpe", "crepe-tiny", "crepe", "rmvpe", "content-base", "content-tiny")


def _busy_jiffies() -> int:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # minus idle and iowait


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _corpus_16k(seconds: float) -> np.ndarray:
    import soundfile as sf
    import soxr

    from rvc_ray.demo_corpus import generate_demo_corpus

    out = Path(tempfile.mkdtemp(prefix="bench_features_"))
    files = generate_demo_corpus(out, num_speakers=1, seconds_per_speaker=max(seconds, 20.0), seed=0)
    parts = []
    for f in files:
        wav, sr = sf.read(f.path, dtype="float32")
        parts.append(soxr.resample(wav, sr, 16000))
    return np.concatenate(parts)[: int(seconds * 16000)].astype(np.float32)


def _build(stage: str):
    from rvc_ray.config import load_run_config

    cfg = load_run_config("rvc_v2_40k")
    if stage == "rmvpe":
        from rvc_ray.features.rmvpe import RmvpePitchExtractor, build_rmvpe_network

        return RmvpePitchExtractor(build_rmvpe_network(), f0_min=50.0, f0_max=1100.0).compute_f0
    if stage.startswith("content-"):
        from rvc_ray.features.content import build_content_encoder

        size = stage.removeprefix("content-")
        model = cfg.model if size == "base" else load_run_config("tiny_cpu").model
        features = cfg.features.model_copy(update={"random_encoder_size": size, "content_encoder_path": None})
        encode = build_content_encoder(features, model).encode
        step = int(SEGMENT_S * 16000)  # as the pipeline does: one preprocessed segment at a time
        return lambda wav: [encode(wav[i : i + step]) for i in range(0, len(wav), step) if len(wav) - i >= 400]
    from rvc_ray.features.pitch import build_pitch_extractor

    return build_pitch_extractor(stage, cfg.features).compute_f0


def bench_stage(stage: str, wav: np.ndarray, repeats: int) -> dict:
    fn = _build(stage)
    fn(wav[: 16000 * 5])  # warm-up
    times, foreign, own = [], [], []
    for _ in range(repeats):
        busy0, own0, t0 = _busy_jiffies(), _own_cpu_s(), time.perf_counter()
        fn(wav)
        wall = time.perf_counter() - t0
        busy = (_busy_jiffies() - busy0) / os.sysconf("SC_CLK_TCK")
        times.append(wall)
        own.append(_own_cpu_s() - own0)
        foreign.append(max(0.0, busy - own[-1]))
    audio_s = len(wav) / 16000
    median = statistics.median(times)
    row = {
        "bench": "features",
        "stage": stage,
        "audio_s": audio_s,
        "wall_s_median": round(median, 3),
        "wall_s_all": [round(t, 3) for t in times],
        "audio_s_per_wall_s": round(audio_s / median, 3),
        "own_cpu_s": [round(o, 1) for o in own],
        "foreign_cpu_s": [round(f, 1) for f in foreign],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_threads": __import__("torch").get_num_threads(),
    }
    if stage in APPLIO_AUDIO_S_PER_S:
        row["applio_audio_s_per_wall_s"] = round(APPLIO_AUDIO_S_PER_S[stage], 3)
        row["ratio_vs_applio"] = round(row["audio_s_per_wall_s"] / APPLIO_AUDIO_S_PER_S[stage], 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="*", default=list(STAGES), choices=STAGES)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--crepe-full-seconds", type=float, default=10.0, help="crepe full is ~0.3x real time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    wav = _corpus_16k(args.seconds)
    for stage in args.stages:
        clip = wav[: int(args.crepe_full_seconds * 16000)] if stage == "crepe" else wav
        print(json.dumps(bench_stage(stage, clip, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
