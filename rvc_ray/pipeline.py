"""The end-to-end job: raw recordings -> dataset -> features -> index -> trained, exported voice.

``jobs/train.py`` and ``rvc-ray train`` both call :func:`run_pipeline`. Each stage is its own
function in its own package; this module only sequences them and prints where things are.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rvc_ray.config import RunConfig
from rvc_ray.errors import InputError
from rvc_ray.layout import RunLayout

__all__ = ["PipelineResult", "prepare_demo_inputs", "run_pipeline"]

log = logging.getLogger("rvc_ray.pipeline")


@dataclass(frozen=True)
class PipelineResult:
    """What each stage produced (stage result objects, see their packages)."""

    layout: RunLayout
    preprocess: Any
    extract: Any
    index: Any
    train: Any
    wall_seconds: float


def prepare_demo_inputs(cfg: RunConfig, *, seconds_per_speaker: float = 60.0) -> list[Path]:
    """Generate the built-in demo corpus into the run's ``corpus/`` folder (once) and return its speaker folders."""
    from rvc_ray.demo_corpus import generate_demo_corpus

    layout = RunLayout.from_config(cfg)
    marker = layout.corpus_dir / ".complete"
    if not marker.exists():
        generate_demo_corpus(layout.corpus_dir, num_speakers=2, seconds_per_speaker=seconds_per_speaker, seed=0)
        marker.write_text(f"{seconds_per_speaker}\n")
    return sorted(p for p in layout.corpus_dir.iterdir() if p.is_dir())


def _say(message: str) -> None:
    print(f"[rvc-ray] {message}", flush=True)


def run_pipeline(
    cfg: RunConfig,
    inputs: Sequence[Path],
    *,
    stop_after: str | None = None,
) -> PipelineResult:
    """Run preprocess -> extract -> index -> train on ``inputs`` (speaker folders, see docs/dataset.md).

    Args:
        cfg: the run configuration.
        inputs: one folder with one sub-folder per speaker, or one folder per speaker.
        stop_after: ``"preprocess"``, ``"extract"`` or ``"index"`` to stop early; ``None`` runs everything.
    """
    from rvc_ray.cluster import ensure_ray

    if stop_after not in (None, "preprocess", "extract", "index"):
        raise ValueError(f"stop_after must be preprocess, extract, index or None, got {stop_after!r}")
    from rvc_ray.preprocess import discover_inputs, run_preprocess

    started = time.perf_counter()
    discover_inputs(inputs, cfg.preprocess.extensions)  # a missing or repeated input folder fails before Ray starts
    layout = RunLayout.from_config(cfg)
    layout.root.mkdir(parents=True, exist_ok=True)
    ensure_ray()

    _say(f"preprocess {len(inputs)} input folder(s) -> {layout.dataset_dir}")
    pre = run_preprocess(cfg, list(inputs), layout.dataset_dir)
    if pre.num_segments == 0:
        raise InputError(f"preprocessing produced no segments; see the readiness report {pre.report_path}")
    extract = index = train = None
    if stop_after != "preprocess":
        from rvc_ray.features.pipeline import run_extract

        _say(f"extract pitch ({cfg.features.f0_method}) and content features -> {layout.features_dir}")
        extract = run_extract(cfg, layout.dataset_dir, layout.features_dir)
    if stop_after not in ("preprocess", "extract"):
        from rvc_ray.features.index import run_index

        _say(f"build the retrieval index -> {layout.index_path}")
        index = run_index(cfg, layout.features_dir, layout.index_path)
    if stop_after is None:
        from rvc_ray.train.launch import fit

        _say(
            f"train on {cfg.scaling.num_workers} worker(s) ({'GPU' if cfg.scaling.use_gpu else 'CPU'}), "
            f"global batch {cfg.train.batch_size} = {cfg.per_worker_batch_size} per worker, {cfg.train.epochs} epochs"
        )
        train = fit(cfg, layout.features_dir, index_path=layout.index_path)
    wall = time.perf_counter() - started
    _say(f"done in {wall:.1f} s")
    _say(f"readiness report: {pre.report_path}")
    if train is not None:
        voices = list(getattr(train, "exported_voices", ()) or ())
        _say(f"voice:            {voices[-1] if voices else layout.voices_dir}")
        _say(f"index:            {layout.index_path}")
        _say(f"tensorboard:      tensorboard --logdir {getattr(train, 'tensorboard_dir', layout.tensorboard_dir)}")
        _say(f"metrics:          {layout.metrics_path}")
    return PipelineResult(layout, pre, extract, index, train, wall)
