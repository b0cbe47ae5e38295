"""rvc-ray against Applio on one machine, side by side: preprocessing, F0 + content extraction, index build.

    python benchmarks/bench_vs_applio.py --applio DIR [--applio-python PY] [--minutes 20 60] [--pairs 3]
        [--stages preprocess,extract,index,scale] [--extract-minutes 5] [--index-frames 50000 200000]
        [--work-dir DIR]

Applio is not part of this repository: give a checkout of IAHispano/Applio (``--applio``) and a Python
that can run its scripts (``--applio-python``; default ``$RVC_RAY_APPLIO_PYTHON``, else
``DIR/../applio-venv/bin/python``). That Python needs what Applio's preprocess/extract/index scripts import:
torch (a CPU build), numpy, scipy, librosa, soundfile, soxr, noisereduce, tqdm, wget, transformers,
torchfcpe, torchcrepe, resampy, faiss-cpu, scikit-learn. The benchmark runs Applio's own, unmodified scripts
(``rvc/train/preprocess/preprocess.py``, ``rvc/train/extract/extract.py``,
``rvc/train/process/extract_index.py``) from a scratch directory of symbolic links to the checkout (so
nothing is written into it), plus two files the scripts expect there: ``rvc/models/predictors/fcpe.pt``
(torchfcpe's bundled ``fcpe_c_v001.pt``, the weights rvc-ray's fcpe uses) and, only on the Applio
side's ``PYTHONPATH``, a stand-in ``torchaudio`` package (torchfcpe/torchcrepe import it at module level;
the scripts never call it on these paths; PyPI's torchaudio does not load beside a CPU torch).

What is compared (each run is a whole process, timed from the outside; runs alternate A B A B):

* ``preprocess``: a generated speech corpus (espeak-ng, two voices, 20-60 s files at 44.1 and 48 kHz)
  of each ``--minutes``. Applio: 2 processes, cut mode Automatic (slicer + 3.0 s pieces, 0.3 s overlap),
  48 Hz high-pass on, noise reduction off, normalisation ``post``, 40 kHz. rvc-ray: ``rvc-ray preprocess
  --config rvc_v2_40k --set preprocess.segment_s=3.0`` (same slicer, 0.3 s overlap, 48 Hz high-pass, the
  same per-segment "post" normalisation, 40 kHz + 16 kHz), default Ray settings.
* ``extract``: F0 (fcpe, bundled weights) + content (a randomly initialised HuBERT-base-size
  ``transformers`` model saved to disk once; Applio loads it as a ``custom`` embedder, rvc-ray as
  ``features.content_encoder_path``) on each side's own preprocessing output of a ``--extract-minutes``
  corpus. Throughput = segment audio seconds / wall seconds (the two segmentations differ slightly).
* ``index``: the same random feature matrix (``--index-frames`` x 768, seed 1234), laid out as each side
  reads it (Applio: ``extracted/*.npy`` of 150 frames; rvc-ray: a feature table), ``IVF{n},Flat`` with
  RVC's n, 2 threads on both sides (``index.num_cpus=2``).
* ``scale``: rvc-ray preprocessing of the largest corpus with 1 and with 2 Ray worker processes.

Peak memory: a sampler thread walks the process tree of each run (the launched process and all its
descendants: Ray's raylet, GCS, dashboard and worker processes are children of the driver when it starts
its own local cluster; Applio's pool processes are children of its script) every 0.2 s and sums PSS
(``/proc/PID/smaps_rollup``; shared pages are split between the processes that share them) and RSS over
all of them; the peak of each sum is reported. CPU seconds (``cpu_s``): user + system time of every process
seen in the tree, as last sampled (less sensitive to other load on the machine than wall time). Output: one JSON line per run and one summary line per
stage and size (medians, ratio = rvc-ray throughput / Applio throughput, peak memory of each side) with the
1-minute load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RATES = (44100, 48000)
VOICES = ("en-us+m3", "en-us+f2")
WORDS = (
    "the quick brown fox jumps over lazy dogs while seven silver birds sing softly near a quiet river and "
    "people walk slowly through the market asking about fresh bread warm tea small gardens bright morning "
    "light heavy rain old stories music from distant hills children laughing trains arriving late every "
    "evening under a pale yellow moon because nobody remembered where the golden key was hidden last winter"
).split()


# --------------------------------------------------------------------------- corpus


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 16))]
    return " ".join(words).capitalize() + rng.choice((".", ".", "?", "!"))


def _speak(text: str, voice: str, speed: int, pitch: int) -> tuple:
    import io

    import soundfile as sf

    out = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    audio, rate = sf.read(io.BytesIO(out), dtype="float32")
    return audio, rate


def generate_corpus(root: Path, minutes: float, seed: int = 0) -> float:
    """Write ``root/<speaker>/<speaker>_<nnn>.wav``: two voices, 20-60 s files, 44.1 / 48 kHz, 16-bit.

    Speaker folders are named ``0`` and ``1`` (Applio wants integer speaker folders). Deterministic for a
    given ``minutes`` and ``seed``. Returns the total duration in seconds.
    """
    import numpy as np
    import soundfile as sf
    import soxr

    stamp = root / ".complete"
    if stamp.exists():
        return float(stamp.read_text())
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(seed)
    total = 0.0
    per_speaker = minutes * 30.0
    for speaker, (voice, rate) in enumerate(zip(VOICES, RATES, strict=True)):
        folder = root / str(speaker)
        folder.mkdir(parents=True)
        done, index = 0.0, 0
        while done < per_speaker - 5.0:
            target = min(rng.uniform(20.0, 60.0), max(20.0, per_speaker - done))
            pieces, length = [], 0.0
            while length < target:
                text = " ".join(_sentence(rng) for _ in range(rng.randint(1, 3)))
                audio, source_rate = _speak(text, voice, 165 + 10 * speaker + rng.randint(-16, 16), 45 + 10 * speaker + rng.randint(-12, 12))
                audio = soxr.resample(audio, source_rate, rate, quality="VHQ") * rng.uniform(0.5, 0.95)
                pause = np.zeros(int(rng.uniform(0.35, 1.5) * rate), dtype=np.float32)
                pieces += [audio.astype(np.float32), pause]
                length += (len(audio) + len(pause)) / rate
            wav = np.concatenate(pieces)[: int(target * rate)]
            sf.write(folder / f"{speaker}_{index:03d}.wav", wav, rate, subtype="PCM_16")
            done += len(wav) / rate
            index += 1
        total += done
    stamp.write_text(repr(total))
    return total


# --------------------------------------------------------------------------- measuring


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far (0.0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return 0.0


def _memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of ``pid`` in KiB from ``/proc/PID/smaps_rollup`` (0, 0 if it is gone)."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


class TreeMemory:
    """Peak summed PSS and RSS over a process and all its descendants, sampled every ``interval_s``."""

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.peak_pss_mb = self.peak_rss_mb = 0.0
        self.max_processes = 0
        self._cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        kids = _children_map()
        tree, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(kids.get(pid, []))
        sums = [sum(v) for v in zip(*(_memory_kb(p) for p in tree), strict=True)] if tree else [0, 0]
        self.peak_pss_mb = max(self.peak_pss_mb, sums[0] / 1024)
        self.peak_rss_mb = max(self.peak_rss_mb, sums[1] / 1024)
        self.max_processes = max(self.max_processes, len(tree))
        for pid in tree:
            self._cpu[pid] = max(self._cpu.get(pid, 0.0), _cpu_seconds(pid))

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds of every process seen in the tree, as last sampled (a process's last 0.2 s may be missed)."""
        return sum(self._cpu.values())

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def load1() -> float:
    return os.getloadavg()[0]


def _cpu_busy_idle() -> tuple[int, int]:
    with open("/proc/stat", encoding="utf-8") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, idle


def wait_for_idle(max_wait_s: float, idle_fraction: float = 0.85, window_s: float = 3.0) -> float:
    """Wait until the machine was at least ``idle_fraction`` idle over ``window_s`` (other work on a shared
    machine comes in bursts), at most ``max_wait_s``. Returns the idle fraction of the last window."""
    deadline = time.monotonic() + max_wait_s
    while True:
        busy0, idle0 = _cpu_busy_idle()
        time.sleep(window_s)
        busy1, idle1 = _cpu_busy_idle()
        fraction = (idle1 - idle0) / max(1, (busy1 - busy0) + (idle1 - idle0))
        if fraction >= idle_fraction or time.monotonic() >= deadline:
            return fraction


WAIT_IDLE_S = 0.0  # set from --wait-idle


def run_measured(label: str, cmd: list[str], *, cwd: Path, env: dict[str, str], log: Path) -> dict:
    """Run ``cmd`` as a whole process; wall time from outside, peak tree memory. Raises on a non-zero exit."""
    idle = wait_for_idle(WAIT_IDLE_S) if WAIT_IDLE_S > 0 else None
    before = load1()
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        memory = TreeMemory(proc.pid)
        rc = proc.wait()
        wall = time.perf_counter() - started
        memory.stop()
    failed = None
    if rc != 0:  # e.g. Ray's start-up timing out on an overloaded machine: recorded, left out of the medians
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        failed = f"exit {rc}: {lines[-1][:300] if lines else ''} (log: {log})"
        shutil.copyfile(log, log.with_suffix(f".failed{int(time.time())}.log"))
    return {
        "run": label,
        **({"failed": failed} if failed else {}),
        "wall_s": round(wall, 2),
        "peak_pss_mb": round(memory.peak_pss_mb),
        "peak_rss_mb": round(memory.peak_rss_mb),
        "processes": memory.max_processes,
        "cpu_s": round(memory.cpu_seconds, 1),
        "idle_before": None if idle is None else round(idle, 2),
        "load1_before": round(before, 2),
        "load1_after": round(load1(), 2),
    }


# --------------------------------------------------------------------------- the two sides


class Sides:
    """Builds the commands of both sides and the scratch trees they need."""

    def __init__(self, applio: Path, applio_python: str, work: Path, rvc_sets: Sequence[str] = ()) -> None:
        self.applio, self.applio_python, self.work = applio, applio_python, work
        self.rvc_sets = [arg for setting in rvc_sets for arg in ("--set", setting)]  # added to rvc-ray's commands
        self.applio_run = work / "applio_run"
        self.stubs = work / "applio_stubs"
        self.encoder = work / "hubert_base_random"
        self.rvc_env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        self.rvc_env.update(
            {"RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}
        )
        self.rvc_env.pop("RAY_ADDRESS", None)
        self.applio_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}

    def prepare(self, need_extract: bool) -> None:
        if not (self.applio / "rvc" / "train" / "preprocess" / "preprocess.py").is_file():
            raise SystemExit(f"error: {self.applio} is not an Applio checkout (no rvc/train/preprocess/preprocess.py)")
        shutil.rmtree(self.applio_run, ignore_errors=True)
        self._link_tree(self.applio, self.applio_run, ("rvc", "models", "predictors"))
        if need_extract:
            import importlib.util

            spec = importlib.util.find_spec("torchfcpe")  # not imported: it needs torchaudio at import time
            if spec is None or not spec.submodule_search_locations:
                raise SystemExit("error: torchfcpe is not installed in this Python (its bundled weights are used)")
            bundled = Path(list(spec.submodule_search_locations)[0]) / "assets" / "fcpe_c_v001.pt"
            shutil.copyfile(bundled, self.applio_run / "rvc" / "models" / "predictors" / "fcpe.pt")
            self._write_torchaudio_stub()
            self._save_random_encoder()

    def _link_tree(self, source: Path, target: Path, real_dirs: tuple[str, ...]) -> None:
        """Symlink every entry of ``source`` into ``target``, except the chain ``real_dirs``, made real."""
        target.mkdir(parents=True, exist_ok=True)
        for entry in source.iterdir():
            if real_dirs and entry.name == real_dirs[0]:
                self._link_tree(entry, target / entry.name, real_dirs[1:])
            else:
                (target / entry.name).symlink_to(entry)
        if real_dirs and not (target / real_dirs[0]).exists():
            (target / real_dirs[0]).mkdir(parents=True)

    def _write_torchaudio_stub(self) -> None:
        package = self.stubs / "torchaudio"
        package.mkdir(parents=True, exist_ok=True)
        message = "stand-in torchaudio of bench_vs_applio.py: not used on the benchmarked paths"
        (package / "__init__.py").write_text(
            f'def load(*args, **kwargs):\n    raise RuntimeError("{message}")\n\nfrom . import transforms  # noqa\n'
        )
        (package / "transforms.py").write_text(
            f'class Resample:\n    def __init__(self, *args, **kwargs):\n        raise RuntimeError("{message}")\n'
        )

    def _save_random_encoder(self) -> None:
        if (self.encoder / "config.json").is_file():
            return
        from rvc_ray.features.content import _build_random_network

        _build_random_network("base", 768, 256).save_pretrained(str(self.encoder))

    # preprocessing
    def applio_preprocess(self, corpus: Path, exp: Path) -> list[str]:
        script = "rvc/train/preprocess/preprocess.py"
        return [self.applio_python, script, str(exp), str(corpus), "40000", "2", "Automatic", "True", "False",
                "0.7", "3.0", "0.3", "post"]

    def rvc_preprocess(self, corpus: Path, out: Path, workers: int | None = None) -> list[str]:
        shutil.rmtree(out, ignore_errors=True)  # else the second run finds the dataset current and returns at once
        cmd = [sys.executable, "-m", "rvc_ray.cli", "preprocess", "--config", "rvc_v2_40k", "--input", str(corpus),
               "--output", str(out), "--set", "preprocess.segment_s=3.0"]
        if workers is not None:  # the scale-out figure: Ray worker processes, as on a cluster
            cmd += ["--set", f"preprocess.cpus_per_task={(os.cpu_count() or 1) / workers:g}",
                    "--set", "preprocess.engine=ray"]
        return cmd + self.rvc_sets

    # extraction
    def applio_extract(self, exp: Path) -> list[str]:
        for name in ("f0", "f0_voiced", "extracted"):
            shutil.rmtree(exp / name, ignore_errors=True)
        return [self.applio_python, "rvc/train/extract/extract.py", str(exp), "fcpe", "2", "-", "40000", "custom",
                str(self.encoder), "0"]

    def rvc_extract(self, dataset: Path, out: Path) -> list[str]:
        shutil.rmtree(out, ignore_errors=True)
        return [sys.executable, "-m", "rvc_ray.cli", "extract", "--config", "rvc_v2_40k", "--dataset", str(dataset),
                "--output", str(out), "--set", "features.f0_method=fcpe",
                "--set", f"features.content_encoder_path={self.encoder}", "--set", "features.content_encoder_format=hf",
                *self.rvc_sets]

    # index
    def applio_index(self, exp: Path) -> list[str]:
        for old in exp.glob("*.index"):
            old.unlink()
        return [self.applio_python, "rvc/train/process/extract_index.py", str(exp), "Auto"]

    def rvc_index(self, features: Path, out: Path) -> list[str]:
        out.unlink(missing_ok=True)
        return [sys.executable, "-m", "rvc_ray.cli", "index", "--config", "rvc_v2_40k", "--features", str(features),
                "--output", str(out), "--set", "index.num_cpus=2"]

    def applio_extract_env(self) -> dict[str, str]:
        return {**self.applio_env, "PYTHONPATH": str(self.stubs)}


def write_index_inputs(frames: int, applio_exp: Path, rvc_features: Path, seed: int = 1234) -> None:
    """The same random matrix [frames, 768] as Applio's ``extracted/*.npy`` and as an rvc-ray feature table."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    stamp = applio_exp / f".frames_{frames}"
    if stamp.exists() and (rvc_features / "table").is_dir():
        return
    shutil.rmtree(applio_exp, ignore_errors=True)
    shutil.rmtree(rvc_features, ignore_errors=True)
    (applio_exp / "extracted").mkdir(parents=True)
    (rvc_features / "table").mkdir(parents=True)
    matrix = np.random.default_rng(seed).standard_normal((frames, 768), dtype=np.float32)
    rows = []
    for number, start in enumerate(range(0, frames, 150)):
        block = matrix[start : start + 150]
        np.save(applio_exp / "extracted" / f"0_{number:05d}_0.npy", block)
        rows.append(np.repeat(block, 2, axis=0).reshape(-1))  # rvc-ray's table holds frame-doubled content
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    content = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(rows)))
    table = pa.table(
        {
            "segment_id": [f"0_{i:05d}_0000" for i in range(len(rows))],
            "num_frames": pa.array([len(r) // 768 for r in rows], pa.int32()),
            "content_dim": pa.array([768] * len(rows), pa.int32()),
            "content": content,
            "split": ["train"] * len(rows),
            "is_mute": [False] * len(rows),
        }
    )
    pq.write_table(table, rvc_features / "table" / "part-00000.parquet")
    stamp.write_text("ok")


# --------------------------------------------------------------------------- stages


def emit(line: dict) -> None:
    print(json.dumps(line), flush=True)


def segment_seconds_applio(exp: Path) -> float:
    import soundfile as sf

    return sum(sf.info(str(p)).duration for p in (exp / "sliced_audios_16k").glob("*.wav"))


def segment_seconds_rvc(dataset: Path) -> float:
    import pyarrow.parquet as pq

    table = pq.read_table(dataset / "segments", columns=["duration_s"])
    return float(sum(table.column("duration_s").to_pylist()))


def summarize(stage: str, size: object, audio: dict[str, float], runs: dict[str, list[dict]]) -> None:
    line: dict = {"summary": stage, "size": size}
    runs = {side: [r for r in side_runs if "failed" not in r] for side, side_runs in runs.items()}
    runs = {side: side_runs for side, side_runs in runs.items() if side_runs}
    for side, side_runs in runs.items():
        walls = [r["wall_s"] for r in side_runs]
        median = statistics.median(walls)
        line[side] = {
            "median_wall_s": round(median, 2),
            "min_wall_s": min(walls),
            "max_wall_s": max(walls),
            "throughput": round(audio[side] / median, 2) if audio.get(side) else None,
            "peak_pss_mb": max(r["peak_pss_mb"] for r in side_runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in side_runs),
            "median_cpu_s": statistics.median(r["cpu_s"] for r in side_runs),
        }
    if "applio" in line and "rvc_ray" in line:
        a, b = line["applio"], line["rvc_ray"]
        if a["throughput"] and b["throughput"]:
            line["ratio"] = round(b["throughput"] / a["throughput"], 3)
        else:  # same input on both sides: throughput ratio = inverse wall ratio
            line["ratio"] = round(a["median_wall_s"] / b["median_wall_s"], 3)
    if not runs:
        emit(line)
        return
    line["load1_range"] = [min(r["load1_before"] for rs in runs.values() for r in rs),
                           max(r["load1_after"] for rs in runs.values() for r in rs)]
    emit(line)


def bench_preprocess(sides: Sides, args: argparse.Namespace) -> None:
    for minutes in args.minutes:
        corpus = sides.work / f"corpus_{minutes:g}min"
        seconds = generate_corpus(corpus, minutes)
        exp, out = sides.work / f"applio_pre_{minutes:g}", sides.work / f"rvc_pre_{minutes:g}"
        runs: dict[str, list[dict]] = {"applio": [], "rvc_ray": []}
        for pair in range(args.pairs):
            shutil.rmtree(exp, ignore_errors=True)
            line = run_measured("applio", sides.applio_preprocess(corpus, exp), cwd=sides.applio_run,
                                env=sides.applio_env, log=sides.work / "last_applio.log")
            runs["applio"].append(line)
            emit({"stage": "preprocess", "minutes": minutes, "pair": pair, **line})
            line = run_measured("rvc_ray", sides.rvc_preprocess(corpus, out), cwd=REPO, env=sides.rvc_env,
                                log=sides.work / "last_rvc.log")
            runs["rvc_ray"].append(line)
            emit({"stage": "preprocess", "minutes": minutes, "pair": pair, **line})
        summarize("preprocess", f"{minutes:g} min ({seconds:.0f} s of audio)", {"applio": seconds, "rvc_ray": seconds}, runs)


def bench_scale(sides: Sides, args: argparse.Namespace) -> None:
    minutes = max(args.minutes)
    corpus = sides.work / f"corpus_{minutes:g}min"
    seconds = generate_corpus(corpus, minutes)
    runs: dict[str, list[dict]] = {"rvc_ray_1_worker": [], "rvc_ray_2_workers": []}
    for pair in range(args.pairs):
        for workers, key in ((1, "rvc_ray_1_worker"), (2, "rvc_ray_2_workers")):
            line = run_measured(key, sides.rvc_preprocess(corpus, sides.work / "rvc_scale", workers), cwd=REPO,
                                env=sides.rvc_env, log=sides.work / "last_rvc.log")
            runs[key].append(line)
            emit({"stage": "scale", "minutes": minutes, "pair": pair, **line})
    summarize("scale", f"{minutes:g} min", {k: seconds for k in runs}, runs)
    ok = {k: [r["wall_s"] for r in v if "failed" not in r] for k, v in runs.items()}
    if all(ok.values()):
        one, two = (statistics.median(walls) for walls in ok.values())
        emit({"summary": "scale_speedup", "two_over_one_workers": round(one / two, 3)})


def bench_extract(sides: Sides, args: argparse.Namespace) -> None:
    corpus = sides.work / f"corpus_{args.extract_minutes:g}min"
    generate_corpus(corpus, args.extract_minutes)
    tag = f"{args.extract_minutes:g}min"
    exp, dataset = sides.work / f"applio_extract_exp_{tag}", sides.work / f"rvc_extract_dataset_{tag}"
    if not (exp / "sliced_audios_16k").is_dir():
        line = run_measured("applio_pre", sides.applio_preprocess(corpus, exp), cwd=sides.applio_run,
                            env=sides.applio_env, log=sides.work / "last_applio.log")
        if "failed" in line:
            raise SystemExit(f"error: Applio's preprocessing for the extraction stage failed: {line['failed']}")
    if not (dataset / "manifest.json").is_file():
        line = run_measured("rvc_pre", sides.rvc_preprocess(corpus, dataset), cwd=REPO, env=sides.rvc_env,
                            log=sides.work / "last_rvc.log")
        if "failed" in line:
            raise SystemExit(f"error: rvc-ray's preprocessing for the extraction stage failed: {line['failed']}")
    audio = {"applio": segment_seconds_applio(exp), "rvc_ray": segment_seconds_rvc(dataset)}
    runs: dict[str, list[dict]] = {"applio": [], "rvc_ray": []}
    for pair in range(args.pairs):
        line = run_measured("applio", sides.applio_extract(exp), cwd=sides.applio_run,
                            env=sides.applio_extract_env(), log=sides.work / "last_applio.log")
        runs["applio"].append(line)
        emit({"stage": "extract", "pair": pair, "segment_audio_s": round(audio["applio"], 1), **line})
        line = run_measured("rvc_ray", sides.rvc_extract(dataset, sides.work / "rvc_features"), cwd=REPO,
                            env=sides.rvc_env, log=sides.work / "last_rvc.log")
        runs["rvc_ray"].append(line)
        emit({"stage": "extract", "pair": pair, "segment_audio_s": round(audio["rvc_ray"], 1), **line})
    summarize("extract", f"{args.extract_minutes:g} min corpus", audio, runs)


def bench_index(sides: Sides, args: argparse.Namespace) -> None:
    for frames in args.index_frames:
        exp, features = sides.work / f"applio_index_{frames}", sides.work / f"rvc_index_{frames}"
        write_index_inputs(frames, exp, features)
        runs: dict[str, list[dict]] = {"applio": [], "rvc_ray": []}
        for pair in range(args.pairs):
            line = run_measured("applio", sides.applio_index(exp), cwd=sides.applio_run, env=sides.applio_env,
                                log=sides.work / "last_applio.log")
            runs["applio"].append(line)
            emit({"stage": "index", "frames": frames, "pair": pair, **line})
            line = run_measured("rvc_ray", sides.rvc_index(features, features / "out.index"), cwd=REPO,
                                env=sides.rvc_env, log=sides.work / "last_rvc.log")
            runs["rvc_ray"].append(line)
            emit({"stage": "index", "frames": frames, "pair": pair, **line})
        summarize("index", f"{frames} x 768", {}, runs)


STAGES = {"preprocess": bench_preprocess, "scale": bench_scale, "extract": bench_extract, "index": bench_index}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--applio", type=Path, required=True, help="An IAHispano/Applio checkout (read only).")
    parser.add_argument(
        "--applio-python",
        default=os.environ.get("RVC_RAY_APPLIO_PYTHON"),
        help="Python that runs Applio's scripts (default: $RVC_RAY_APPLIO_PYTHON, else DIR/../applio-venv/bin/python).",
    )
    parser.add_argument("--minutes", type=float, nargs="+", default=[20.0, 60.0], help="Preprocessing corpus sizes.")
    parser.add_argument("--pairs", type=int, default=3, help="Alternating (Applio, rvc-ray) pairs per measurement.")
    parser.add_argument("--stages", default="preprocess,scale,extract,index", help=f"Comma list of {sorted(STAGES)}.")
    parser.add_argument("--extract-minutes", type=float, default=5.0, help="Corpus size of the extraction stage.")
    parser.add_argument("--index-frames", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--rvc-set", action="append", default=[], metavar="KEY=VALUE",
                        help="A setting added to rvc-ray's preprocess and extract commands (repeatable).")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/rvc_ray_vs_applio"), help="Scratch (corpora cached).")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=60.0,
        help="Before each run wait up to this many seconds for a 3 s window with >= 85%% idle CPU (0: never).",
    )
    args = parser.parse_args()
    global WAIT_IDLE_S
    WAIT_IDLE_S = args.wait_idle
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; choose from {sorted(STAGES)}")
    if shutil.which("espeak-ng") is None and {"preprocess", "scale", "extract"} & set(stages):
        parser.error("espeak-ng is needed to generate the corpus (Debian: apt-get install espeak-ng)")
    applio = args.applio.expanduser().resolve()
    applio_python = args.applio_python or str(applio.parent / "applio-venv" / "bin" / "python")
    if not Path(applio_python).exists():
        parser.error(f"no Python for Applio at {applio_python}; pass --applio-python or set RVC_RAY_APPLIO_PYTHON")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    sides = Sides(applio, applio_python, args.work_dir.resolve(), args.rvc_set)
    sides.prepare(need_extract="extract" in stages)
    emit({"event": "start", "cpus": os.cpu_count(), "load1": round(load1(), 2), "applio": str(applio),
          "applio_python": applio_python, "stages": stages, "rvc_set": args.rvc_set})
    for stage in stages:
        STAGES[stage](sides, args)


if __name__ == "__main__":
    main()
