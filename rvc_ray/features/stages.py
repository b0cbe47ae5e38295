"""The Ray Data stages of feature extraction: class UDFs whose models load once per actor.

``PitchStage`` adds the raw F0 track, ``ContentStage`` adds content features and aligns every stream
(:func:`align_feature_streams`). Both take and return ``pyarrow.Table`` batches. A row that fails gets
its reason in the ``error`` column (and empty feature lists); the driver records it and does not write it.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from rvc_ray.features.pitch import HOP_16K, compute_pitch_bins

if TYPE_CHECKING:
    import pyarrow as pa

    from rvc_ray.config import FeatureConfig

__all__ = [
    "ONEDNN_CACHE_VARIABLE",
    "ContentStage",
    "FeatureRowError",
    "PitchAndContentStage",
    "PitchStage",
    "actor_threads",
    "align_feature_streams",
    "list_column_arrays",
    "stage_actor_resources",
]


def stage_actor_resources(features: FeatureConfig, stage: str) -> dict[str, float]:
    """Ray resources of one ``"pitch"``, ``"content"`` or ``"fused"`` (both) actor: ``features.actor_cpus``
    CPUs and, with ``features.use_gpu``, a GPU share (``pitch_gpus_per_actor`` / ``content_gpus_per_actor``,
    else ``gpus_per_actor``; a fraction packs several actors on one GPU, e.g. 0.25 = four per GPU). A fused
    actor takes the larger of the two shares."""
    if stage not in ("pitch", "content", "fused"):
        raise ValueError(f"unknown extraction stage {stage!r} (pitch, content or fused)")

    def share(specific: float | None) -> float:
        return specific if specific is not None else features.gpus_per_actor

    pitch, content = share(features.pitch_gpus_per_actor), share(features.content_gpus_per_actor)
    gpus = {"pitch": pitch, "content": content, "fused": max(pitch, content)}[stage] if features.use_gpu else 0.0
    return {"num_cpus": features.actor_cpus, "num_gpus": gpus}


def actor_threads(features: FeatureConfig) -> tuple[int, int]:
    """``(batches at once, torch threads per op)`` of one extraction actor with ``features.actor_cpus`` CPUs
    (the plan may lower the batches: :func:`rvc_ray.features.extract.batches_per_actor`).

    On CPU each CPU runs one batch on one thread (Ray Data calls the actor that many times at once), and the
    batches share the actor's one copy of the models. With HuBERT-base on 2 cores, two segments at once in
    one process ran 6 % faster than two 1-CPU processes (each streaming its own weights through the cache)
    and 16 % faster than one segment at a time on 2 torch threads (docs/benchmarks.md). On a GPU the device
    does the work: one batch at a time, the CPUs as torch threads.
    """
    cpus = max(1, round(features.actor_cpus))
    return (1, cpus) if features.use_gpu else (cpus, 1)


# oneDNN (torch's CPU convolutions) caches the primitives it builds for every input shape, up to 1024 of
# them; segments come in many lengths (155 on a 20-minute corpus), and the cache grew an extraction actor
# from 1.1 to 2.7 GB over that corpus. Without it memory stays flat at the same speed (docs/benchmarks.md).
ONEDNN_CACHE_VARIABLE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


def _prepare_torch(features: FeatureConfig) -> None:
    """Set this actor's torch threads (:func:`actor_threads`) and, unless the environment sets it, turn off
    oneDNN's primitive cache: before any model runs, since oneDNN reads the setting on first use."""
    import torch

    os.environ.setdefault(ONEDNN_CACHE_VARIABLE, "0")
    torch.set_num_threads(actor_threads(features)[1])


class FeatureRowError(ValueError):
    """A segment whose features cannot be made (empty, NaN, inconsistent lengths)."""


def list_column_arrays(column: pa.ChunkedArray, dtype=np.float32) -> list[np.ndarray]:
    """A ``list<...>`` Arrow column -> one numpy array per row (no Python-object round trip)."""
    out: list[np.ndarray] = []
    for chunk in column.chunks:
        values = chunk.values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        offsets = chunk.offsets.to_numpy()
        out.extend(values[offsets[i] : offsets[i + 1]] for i in range(len(chunk)))
    return out


def align_feature_streams(
    *,
    wav: np.ndarray,
    wav_16k: np.ndarray,
    f0_hz: np.ndarray,
    content_50hz: np.ndarray,
    hop_length: int,
    sample_rate: int,
    f0_min: float,
    f0_max: float,
) -> dict[str, Any]:
    """Frame-double the content (x2, ``np.repeat`` as RVC) and trim every stream to one frame count.

    ``F = min(2 * T50, len(f0_hz), len(wav) // hop_length)``; returns ``num_frames`` F,
    ``content [F, C]``, ``f0_hz [F]``, ``pitch_bins [F]`` (1..255), ``wav [F * hop]``, ``wav_16k [F * 160]``.

    Raises:
        FeatureRowError: empty/NaN features, or waveforms whose durations disagree.
    """
    if content_50hz.ndim != 2 or content_50hz.shape[0] == 0:
        raise FeatureRowError(
            f"empty content features ({len(wav_16k)} samples at 16 kHz; at least 400 are needed for one frame)"
        )
    if not np.isfinite(content_50hz).all():
        raise FeatureRowError("content features contain NaN or inf")
    if len(f0_hz) == 0:
        raise FeatureRowError("empty F0 track")
    if not np.isfinite(f0_hz).all():
        raise FeatureRowError("F0 track contains NaN or inf")
    if not (np.isfinite(wav).all() and np.isfinite(wav_16k).all()):
        raise FeatureRowError("waveform contains NaN or inf samples")
    duration, duration_16k = len(wav) / sample_rate, len(wav_16k) / 16000
    if abs(duration - duration_16k) > 0.02:
        raise FeatureRowError(f"wav lasts {duration:.3f} s but wav_16k lasts {duration_16k:.3f} s")
    content = np.repeat(content_50hz, 2, axis=0)
    frames = min(len(content), len(f0_hz), len(wav) // hop_length)
    if frames <= 0:
        raise FeatureRowError(
            f"no frames after alignment (content {len(content)}, f0 {len(f0_hz)}, wav {len(wav)} samples)"
        )
    f0 = np.asarray(f0_hz[:frames], dtype=np.float32)
    return {
        "num_frames": frames,
        "content": np.ascontiguousarray(content[:frames], dtype=np.float32),
        "f0_hz": f0,
        "pitch_bins": compute_pitch_bins(f0, f0_min, f0_max),
        "wav": np.asarray(wav[: frames * hop_length], dtype=np.float32),
        "wav_16k": np.asarray(wav_16k[: frames * HOP_16K], dtype=np.float32),
    }


class PitchStage:
    """Adds ``f0_raw`` (list<float32>, ``N//160 + 1`` values), ``pitch_seconds`` and ``error``."""

    def __init__(self, raw_cfg: dict, device: str = "cpu"):
        from rvc_ray.config import RunConfig
        from rvc_ray.features.pitch import build_pitch_extractor

        cfg = RunConfig.model_validate(raw_cfg)
        _prepare_torch(cfg.features)
        self.extractor = build_pitch_extractor(cfg.features.f0_method, cfg.features, device=device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        wavs_16k = list_column_arrays(batch.column("wav_16k"))
        is_mute = batch.column("is_mute").to_pylist()
        errors = batch.column("error").to_pylist() if "error" in batch.column_names else [None] * len(wavs_16k)
        f0s, seconds = [], []
        for i, (wav, mute) in enumerate(zip(wavs_16k, is_mute, strict=True)):
            start = time.perf_counter()
            f0 = np.zeros(0, dtype=np.float32)
            if errors[i] is None and mute:
                f0 = np.zeros(len(wav) // HOP_16K + 1, dtype=np.float32)  # RVC mute rows: unvoiced throughout
            elif errors[i] is None:
                try:
                    f0 = self.extractor.compute_f0(wav)
                except Exception as exc:  # noqa: BLE001 - one bad segment must not stop the run
                    errors[i] = f"pitch extraction failed: {type(exc).__name__}: {exc}"
            f0s.append(f0)
            seconds.append(time.perf_counter() - start)
        batch = batch.drop_columns([c for c in ("error",) if c in batch.column_names])
        return (
            batch.append_column("f0_raw", pa.array(f0s, type=pa.list_(pa.float32())))
            .append_column("pitch_seconds", pa.array(seconds, type=pa.float64()))
            .append_column("error", pa.array(errors, type=pa.string()))
        )


OUTPUT_COLUMNS = ("num_frames", "content_dim", "content", "f0_hz", "pitch_bins", "wav", "wav_16k")


class ContentStage:
    """Encodes content, aligns all streams; output = the feature-table columns + ``content_seconds`` + ``error``."""

    def __init__(self, raw_cfg: dict, device: str = "cpu"):
        from rvc_ray.config import RunConfig
        from rvc_ray.features.content import build_content_encoder

        cfg = RunConfig.model_validate(raw_cfg)
        _prepare_torch(cfg.features)
        self.cfg = cfg
        self.encoder = build_content_encoder(cfg.features, cfg.model, device=device)

    def _row(self, wav, wav_16k, f0) -> dict[str, Any]:
        content = self.encoder.encode(wav_16k)
        return align_feature_streams(
            wav=wav,
            wav_16k=wav_16k,
            f0_hz=f0,
            content_50hz=content,
            hop_length=self.cfg.audio.hop_length,
            sample_rate=self.cfg.audio.sample_rate,
            f0_min=self.cfg.features.f0_min_hz,
            f0_max=self.cfg.features.f0_max_hz,
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        wavs = list_column_arrays(batch.column("wav"))
        wavs_16k = list_column_arrays(batch.column("wav_16k"))
        f0s = list_column_arrays(batch.column("f0_raw"))
        errors = batch.column("error").to_pylist()
        cols: dict[str, list] = {name: [] for name in OUTPUT_COLUMNS}
        seconds = []
        dim = self.encoder.output_dim
        empty = {
            "num_frames": 0,
            "content": np.zeros((0, dim), np.float32),
            "f0_hz": np.zeros(0, np.float32),
            "pitch_bins": np.zeros(0, np.int32),
            "wav": np.zeros(0, np.float32),
            "wav_16k": np.zeros(0, np.float32),
        }
        for i, (wav, wav_16k, f0) in enumerate(zip(wavs, wavs_16k, f0s, strict=True)):
            start = time.perf_counter()
            row = empty
            if errors[i] is None:
                try:
                    row = self._row(wav, wav_16k, f0)
                except Exception as exc:  # noqa: BLE001 - recorded, the run continues
                    errors[i] = (
                        str(exc)
                        if isinstance(exc, FeatureRowError)
                        else f"content extraction failed: {type(exc).__name__}: {exc}"
                    )
            seconds.append(time.perf_counter() - start)
            cols["num_frames"].append(row["num_frames"])
            cols["content_dim"].append(dim)
            cols["content"].append(row["content"].reshape(-1))
            for name in ("f0_hz", "pitch_bins", "wav", "wav_16k"):
                cols[name].append(row[name])
        keep = [c for c in ("segment_id", "speaker_id", "is_mute", "pitch_seconds") if c in batch.column_names]
        out = batch.select(keep)
        types = {"num_frames": pa.int32(), "content_dim": pa.int32(), "pitch_bins": pa.list_(pa.int32())}
        for name in OUTPUT_COLUMNS:
            out = out.append_column(name, pa.array(cols[name], type=types.get(name, pa.list_(pa.float32()))))
        return out.append_column("content_seconds", pa.array(seconds, type=pa.float64())).append_column(
            "error", pa.array(errors, type=pa.string())
        )


class PitchAndContentStage:
    """Both stages in one actor (``features.stages`` fused, the CPU default): pitch, then content, of each
    batch; the same output as :class:`ContentStage` after :class:`PitchStage`.

    On CPU nodes one such actor per core keeps every core busy for the whole stage, where a pitch pool
    (fcpe: fast) beside a content pool leaves the pitch actors idle most of the time; the batches also
    stay in the actor instead of crossing the object store between the two pools.
    """

    def __init__(self, raw_cfg: dict, device: str = "cpu"):
        self.pitch = PitchStage(raw_cfg, device)
        self.content = ContentStage(raw_cfg, device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.content(self.pitch(batch))
