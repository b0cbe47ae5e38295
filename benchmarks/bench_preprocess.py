"""Preprocessing benchmark: the Ray pipeline (Ray tasks) against a plain single-process loop, same files, same run.

    .venv/bin/python benchmarks/bench_preprocess.py [--minutes 40] [--repeats 3] [--corpus-dir DIR] [--job rvc_v2_40k]

Generates (once, cached in --corpus-dir) a demo corpus of --minutes minutes (2 speakers; the default 40 is
a typical RVC dataset, the issue asks for at least 10), then:

1. starts/joins the cluster with ``rvc_ray.cluster.ensure_ray()`` (not timed);
2. the Ray pipeline on the half corpus (cold: includes starting the Ray workers), then warm, and the
   plain loop (``run_preprocess(use_ray=False)``: the same per-file function, one process) on the half
   corpus (its first run also pays this process's imports);
3. --repeats alternating pairs (Ray, loop) on the full corpus, warm.

Every run prints one JSON line: audio seconds, wall seconds, throughput (audio-s per wall-s), peak RSS
(the loop: this process; Ray: this driver plus every ``ray::`` worker process of this cluster, summed per
sample, and the largest single worker). A last line gives the ratio loop wall / Ray wall on the full
corpus (medians over the repeats, and the worst pair), on the half corpus, and how peak memory changed
from the half to the full corpus. RSS sums count shared pages once per process, so they overstate the
true total; they are comparable between the half and the full corpus.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import threading
import time
from pathlib import Path


class PeakMemorySampler:
    """Samples RSS of this process and (optionally) its Ray worker descendants every ``interval_s``."""

    def __init__(self, include_ray_workers: bool, interval_s: float = 0.2, rescan_s: float = 1.0) -> None:
        import psutil  # vendored by ray (ray/thirdparty_files), importable once ray is imported

        self._psutil = psutil
        self.include_ray_workers = include_ray_workers
        self.interval_s = interval_s
        # Listing the process tree and reading every command line is the expensive part, and it runs in the
        # driver beside the work being timed: do it once per rescan_s, and only read RSS in between.
        self.rescan_s = rescan_s
        self._workers: list = []
        self._last_scan = 0.0
        self.peak_total_mb = self.peak_driver_mb = self.peak_workers_mb = self.peak_single_worker_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        me = self._psutil.Process()
        driver = me.memory_info().rss / 2**20
        workers = []
        if self.include_ray_workers:
            if time.monotonic() - self._last_scan > self.rescan_s:
                self._last_scan = time.monotonic()
                self._workers = []
                for child in me.children(recursive=True):
                    with contextlib.suppress(self._psutil.Error):
                        command = child.cmdline()
                        if child.name().startswith("ray::") or (command and command[0].startswith("ray::")):
                            self._workers.append(child)
            for child in self._workers:
                with contextlib.suppress(self._psutil.Error):
                    workers.append(child.memory_info().rss / 2**20)
        self.peak_driver_mb = max(self.peak_driver_mb, driver)
        self.peak_workers_mb = max(self.peak_workers_mb, sum(workers))
        self.peak_single_worker_mb = max([self.peak_single_worker_mb, *workers])
        self.peak_total_mb = max(self.peak_total_mb, driver + sum(workers))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _ensure_corpus(corpus_dir: Path, minutes: float) -> tuple[Path, Path]:
    """The full corpus (generated once) and a half corpus (symlinks to the first half of each speaker's files)."""
    from rvc_ray.demo_corpus import generate_demo_corpus

    full, half = corpus_dir / f"full_{minutes:g}min", corpus_dir / f"half_{minutes:g}min"
    stamp = full / ".complete"
    if not stamp.exists():
        shutil.rmtree(full, ignore_errors=True)
        started = time.perf_counter()
        generate_demo_corpus(full, num_speakers=2, seconds_per_speaker=minutes * 30.0, seed=0)
        stamp.write_text("ok")
        print(
            json.dumps(
                {"event": "corpus_generated", "minutes": minutes, "seconds": round(time.perf_counter() - started, 1)}
            )
        )
    shutil.rmtree(half, ignore_errors=True)
    for speaker in sorted(p for p in full.iterdir() if p.is_dir()):
        wavs = sorted(speaker.glob("*.wav"))
        (half / speaker.name).mkdir(parents=True)
        for wav in wavs[: max(1, len(wavs) // 2)]:
            (half / speaker.name / wav.name).symlink_to(wav)
    return full, half


def _run_once(cfg, corpus: Path, out_dir: Path, use_ray: bool, label: str) -> dict:  # noqa: ANN001
    from rvc_ray.preprocess import run_preprocess

    with PeakMemorySampler(include_ray_workers=use_ray) as memory, contextlib.redirect_stdout(io.StringIO()):
        result = run_preprocess(cfg, [corpus], out_dir, use_ray=use_ray, force=True)
    line = {
        "run": label,
        "engine": "ray" if use_ray else "loop",
        "audio_s": round(result.audio_seconds_in, 1),
        "wall_s": round(result.wall_seconds, 2),
        "throughput_audio_s_per_wall_s": round(result.throughput, 1),
        "segments": result.num_segments,
        "peak_rss_mb_total": round(memory.peak_total_mb),
        "peak_rss_mb_driver": round(memory.peak_driver_mb),
        "machine_load_1min": round(os.getloadavg()[0], 1),  # other users of a shared box skew every figure
    }
    if use_ray:
        line["peak_rss_mb_workers_sum"] = round(memory.peak_workers_mb)
        line["peak_rss_mb_largest_worker"] = round(memory.peak_single_worker_mb)
    print(json.dumps(line), flush=True)
    return line


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=40.0, help="length of the full corpus (>= 10 for the issue)")
    parser.add_argument("--repeats", type=int, default=3, help="(Ray, loop) pairs on the full corpus")
    parser.add_argument("--corpus-dir", type=Path, default=Path("/tmp/rvc_ray_bench_preprocess"))
    parser.add_argument(
        "--job", default="rvc_v2_40k", help="preset or job YAML (only preprocess + audio.sample_rate matter)"
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    import ray

    from rvc_ray.cluster import ensure_ray
    from rvc_ray.config import load_run_config

    cfg = load_run_config(args.job)
    full, half = _ensure_corpus(args.corpus_dir, args.minutes)
    out = args.corpus_dir / "out"
    started = time.perf_counter()
    ensure_ray()
    cpus = ray.cluster_resources().get("CPU")
    print(
        json.dumps(
            {
                "event": "ray_ready",
                "seconds": round(time.perf_counter() - started, 1),
                "logical_cpus": cpus,
                "cores": os.cpu_count(),
            }
        )
    )
    ray_half_cold = _run_once(cfg, half, out / "ray_half", True, "half_cold")
    ray_half = _run_once(cfg, half, out / "ray_half", True, "half_warm")
    _run_once(cfg, half, out / "loop_half", False, "half_first")  # pays this process's imports
    loop_half = _run_once(cfg, half, out / "loop_half", False, "half_warm")
    ray_full, loop_full = [], []
    for repeat in range(args.repeats):
        ray_full.append(_run_once(cfg, full, out / "ray_full", True, f"full_warm_{repeat}"))
        loop_full.append(_run_once(cfg, full, out / "loop_full", False, f"full_warm_{repeat}"))
    same = sorted((out / "ray_full" / "segments").glob("*.parquet"))
    identical = all(p.read_bytes() == (out / "loop_full" / "segments" / p.name).read_bytes() for p in same)
    ray_walls, loop_walls = [r["wall_s"] for r in ray_full], [r["wall_s"] for r in loop_full]
    print(
        json.dumps(
            {
                "summary": "preprocess",
                "minutes": args.minutes,
                "repeats": args.repeats,
                "ray_wall_s_median": round(_median(ray_walls), 2),
                "loop_wall_s_median": round(_median(loop_walls), 2),
                "ratio_ray_over_loop": round(_median(loop_walls) / _median(ray_walls), 2),
                "ratio_worst_pair": round(min(lw / rw for lw, rw in zip(loop_walls, ray_walls, strict=True)), 2),
                "ratio_half_corpus": round(loop_half["wall_s"] / ray_half["wall_s"], 2),
                "ratio_ray_cold_over_loop_half": round(loop_half["wall_s"] / ray_half_cold["wall_s"], 2),
                "target_ratio": 1.5,
                "ray_workers_peak_mb_half_vs_full": [
                    ray_half["peak_rss_mb_workers_sum"],
                    max(r["peak_rss_mb_workers_sum"] for r in ray_full),
                ],
                "ray_largest_worker_mb_half_vs_full": [
                    ray_half["peak_rss_mb_largest_worker"],
                    max(r["peak_rss_mb_largest_worker"] for r in ray_full),
                ],
                "loop_peak_mb_half_vs_full": [
                    loop_half["peak_rss_mb_total"],
                    max(r["peak_rss_mb_total"] for r in loop_full),
                ],
                "shards_identical_ray_vs_loop": identical,
            }
        )
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
