"""The end-to-end job: raw recordings -> dataset -> features -> index -> trained, exported voice.

``jobs/train.py`` and ``rvc-ray train`` both call :func:`run_pipeline`. Each stage is its own
function in its own package; this module only sequences them and prints where things are.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from rvc_ray.config import RunConfig
from rvc_ray.errors import InputError
from rvc_ray.layout import RunLayout

__all__ = ["PipelineResult", "StopAfter", "check_inputs", "prepare_demo_inputs", "prepare_run", "run_pipeline"]

log = logging.getLogger("rvc_ray.pipeline")


class StopAfter(str, Enum):
    """The stages a run may stop after (``--stop-after``); without one it trains and exports."""

    PREPROCESS = "preprocess"
    EXTRACT = "extract"
    INDEX = "index"


@dataclass(frozen=True)
class PipelineResult:
    """What each stage produced (stage result objects, see their packages)."""

    layout: RunLayout
    preprocess: Any
    extract: Any
    index: Any
    train: Any
    wall_seconds: float


def prepare_demo_inputs(cfg: RunConfig, *, seconds_per_speaker: float = 60.0) -> list[Path | str]:
    """Generate the built-in demo corpus into the run's ``corpus/`` folder (once) and return its speaker folders.

    On a bucket (``experiment.work_dir=s3://...``) the corpus is generated in a local temporary folder and
    uploaded, and the speaker folders are returned as URIs, which the preprocessing workers read.
    """
    import tempfile

    from rvc_ray import storage
    from rvc_ray.demo_corpus import generate_demo_corpus

    layout = RunLayout.from_config(cfg)
    corpus = layout.corpus_location
    marker = storage.join(corpus, ".complete")
    if not storage.exists(marker):
        with tempfile.TemporaryDirectory(prefix="rvc-demo-corpus-") as staging:
            # the ground-truth F0 goes beside the corpus (<corpus>_f0/): inside the staging directory too
            local = Path(staging) / "corpus" if layout.is_remote else Path(corpus)
            generate_demo_corpus(local, num_speakers=2, seconds_per_speaker=seconds_per_speaker, seed=0)
            if layout.is_remote:
                storage.upload_dir(local, corpus)
        storage.write_text(marker, f"{seconds_per_speaker}\n")
    files = storage.list_files(corpus, suffix="", recursive=True)
    speakers = sorted({f[len(corpus) :].strip("/").split("/")[0] for f in files if not f.endswith(".complete")})
    return [storage.as_local_or_uri(storage.join(corpus, name)) for name in speakers]


def _say(message: str) -> None:
    print(f"[rvc-ray] {message}", flush=True)


def check_inputs(inputs: Sequence[Path | str], extensions: Sequence[str]) -> None:
    """A missing or repeated input folder (local or URI) fails here, before Ray starts or anything is written."""
    from rvc_ray import storage
    from rvc_ray.preprocess import discover_inputs

    local = [Path(i) for i in inputs if not storage.is_remote(str(i))]
    for remote in (str(i) for i in inputs if storage.is_remote(str(i))):
        if not storage.is_dir(remote):
            raise InputError(f"input folder {remote} does not exist or holds no files")
    if local:
        discover_inputs(local, extensions)


def prepare_run(cfg: RunConfig) -> None:
    """Connect to the cluster and refuse a work_dir / storage_path that some node cannot use (before any work)."""
    from rvc_ray.cluster import check_run_locations, ensure_ray

    ensure_ray()
    check_run_locations(RunLayout.from_config(cfg).root_location, cfg.scaling.storage_path)


def run_pipeline(
    cfg: RunConfig,
    inputs: Sequence[Path | str],
    *,
    stop_after: str | None = None,
    locations_checked: bool = False,
) -> PipelineResult:
    """Run preprocess -> extract -> index -> train on ``inputs`` (speaker folders, see docs/dataset.md).

    Every stage reads and writes under the run's location (``experiment.work_dir``, a local path or a URI).

    Args:
        cfg: the run configuration.
        inputs: one folder with one sub-folder per speaker, or one folder per speaker (local paths or URIs).
        stop_after: ``"preprocess"``, ``"extract"`` or ``"index"`` to stop early; ``None`` runs everything.
        locations_checked: the caller already ran :func:`prepare_run` for ``cfg``.
    """
    stages = [stage.value for stage in StopAfter]
    if stop_after is not None and stop_after not in stages:
        raise ValueError(f"stop_after must be one of {', '.join(stages)} or None, got {stop_after!r}")
    from rvc_ray import storage
    from rvc_ray.cluster import check_locations_on_cluster
    from rvc_ray.preprocess import run_preprocess

    started = time.perf_counter()
    check_inputs(inputs, cfg.preprocess.extensions)
    layout = RunLayout.from_config(cfg)
    if not locations_checked:
        prepare_run(cfg)
    # prepare_run checked the run's locations (every stage's output is under them); the inputs are elsewhere
    check_locations_on_cluster(reads=[("input folder", storage.normalize_location(str(i))) for i in inputs])

    _say(f"preprocess {len(inputs)} input folder(s) -> {layout.dataset_location}")
    pre = run_preprocess(cfg, list(inputs), layout.dataset_location, locations_checked=True)
    if pre.num_segments == 0:
        raise InputError(f"preprocessing produced no segments; see the readiness report {pre.report_path}")
    extract = index = train = None
    if stop_after != "preprocess":
        from rvc_ray.features.extract import run_extract

        _say(f"extract pitch ({cfg.features.f0_method}) and content features -> {layout.features_location}")
        extract = run_extract(cfg, layout.dataset_location, layout.features_location, locations_checked=True)
    if stop_after not in ("preprocess", "extract"):
        from rvc_ray.features.index import run_index

        _say(f"build the retrieval index -> {layout.index_location}")
        index = run_index(cfg, layout.features_location, layout.index_location, locations_checked=True)
    if stop_after is None:
        from rvc_ray.train.launch import fit

        _say(
            f"train on {cfg.scaling.num_workers} worker(s) ({'GPU' if cfg.scaling.use_gpu else 'CPU'}), "
            f"global batch {cfg.train.batch_size} = {cfg.per_worker_batch_size} per worker, {cfg.train.epochs} epochs"
        )
        train = fit(cfg, layout.features_location, index_path=layout.index_location, locations_checked=True)
    wall = time.perf_counter() - started
    _say(f"done in {wall:.1f} s")
    _say(f"readiness report: {pre.report_path}")
    if train is not None:
        voices = list(getattr(train, "exported_voices", ()) or ())
        _say(f"voice:            {voices[-1] if voices else layout.voices_location}")
        _say(f"index:            {layout.index_location}")
        _say(f"tensorboard:      tensorboard --logdir {getattr(train, 'tensorboard_dir', layout.tensorboard_location)}")
        _say(f"metrics:          {layout.metrics_location}")
    return PipelineResult(layout, pre, extract, index, train, wall)
