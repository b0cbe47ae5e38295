"""FAISS index build time and peak memory for 50k and 200k frames of 768-d features.

Each size runs in its own subprocess (so peak RSS is per size), on random standard-normal float32
features (seed 1234, as docs/applio-baselines.md §5), through :func:`rvc_ray.features.index.build_ivf_index`
(shuffle, IVF{n},Flat, nprobe 1, add in batches of 8192) plus ``faiss.write_index``. Prints one JSON line
per size with the ratio to Applio's ``extract_index.py`` on this machine (12.24 s / 127.51 s median).

    .venv/bin/python benchmarks/bench_index.py                 # 50k and 200k, 2 threads
    .venv/bin/python benchmarks/bench_index.py --frames 50000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APPLIO_WALL_S = {50_000: 12.24, 200_000: 127.51}
APPLIO_PEAK_RSS_MIB = {50_000: 648.0, 200_000: 2.07 * 1024}
# Applio's own train + add + write phases (docs/applio-baselines.md §5, phase split), i.e. without imports and file loading.
APPLIO_TRAIN_ADD_WRITE_S = {50_000: 5.85 + 0.70 + 0.05, 200_000: 103.79 + 9.89 + 0.23}


def _busy_jiffies() -> int:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]


def _one(frames: int, dim: int, threads: int) -> dict:
    t_start = time.perf_counter()
    import faiss
    import numpy as np

    from rvc_ray.features.index import build_ivf_index

    faiss.omp_set_num_threads(threads)
    t_import = time.perf_counter() - t_start
    feats = np.random.default_rng(1234).standard_normal((frames, dim)).astype(np.float32)
    busy0, own0 = _busy_jiffies(), sum(os.times()[:2])
    t0 = time.perf_counter()
    index = build_ivf_index(feats, seed=1234)
    t_build = time.perf_counter() - t0
    path = Path(tempfile.mkdtemp()) / "bench.index"
    faiss.write_index(index, str(path))
    t_total = time.perf_counter() - t0
    busy = (_busy_jiffies() - busy0) / os.sysconf("SC_CLK_TCK")
    return {
        "bench": "index",
        "frames": frames,
        "dim": dim,
        "n_ivf": int(faiss.extract_index_ivf(index).nlist),
        "import_s": round(t_import, 2),
        "build_s": round(t_build, 2),
        "build_and_write_s": round(t_total, 2),
        "size_mib": round(path.stat().st_size / 2**20, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "foreign_cpu_s": round(max(0.0, busy - (sum(os.times()[:2]) - own0)), 1),
        "threads": threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="*", default=[50_000, 200_000])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_one(args.frames[0], args.dim, args.threads)), flush=True)
        return
    for frames in args.frames:
        for _ in range(args.repeats):
            cmd = [
                sys.executable,
                __file__,
                "--child",
                "--frames",
                str(frames),
                "--dim",
                str(args.dim),
                "--threads",
                str(args.threads),
            ]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            row = json.loads(out.strip().splitlines()[-1])
            if frames in APPLIO_WALL_S and args.dim == 768:
                row["applio_wall_s"] = APPLIO_WALL_S[frames]
                row["speedup_vs_applio"] = round(APPLIO_WALL_S[frames] / row["build_and_write_s"], 2)
                row["applio_train_add_write_s"] = round(APPLIO_TRAIN_ADD_WRITE_S[frames], 2)
                row["speedup_vs_applio_phases"] = round(APPLIO_TRAIN_ADD_WRITE_S[frames] / row["build_and_write_s"], 2)
                row["applio_peak_rss_mib"] = APPLIO_PEAK_RSS_MIB[frames]
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
