"""Feature extraction on Ray Data: ``dataset/segments/*.parquet`` -> ``features/table/*.parquet``.

Stages (class UDFs on ``ActorPoolStrategy`` actors, models loaded once per actor in ``__init__``;
``num_gpus=features.gpus_per_actor`` when ``features.use_gpu``, ``features.actor_cpus`` CPUs otherwise;
``features.batch_size`` rows per batch):

1. read the segments (only ``segment_id, speaker_id, wav, wav_16k``), drop the ones already done, add
   ``features.mute_rows_per_speaker`` mute rows per speaker (3 s of zeros, docs/rvc-reference.md §4.2);
2. :class:`~rvc_ray.features.stages.PitchStage`: F0 from ``wav_16k`` (mute rows: 0 Hz throughout);
3. :class:`~rvc_ray.features.stages.ContentStage`: content features, x2 frame doubling, alignment
   (``features.stages`` fused, the CPU default: 2 and 3 in one pool of
   :class:`~rvc_ray.features.stages.PitchAndContentStage` actors, one per 2 CPUs, each running 2 batches at once,
   :func:`batches_per_actor`, :func:`rvc_ray.cluster.plan_extraction`);
4. the driver streams the results (``iter_batches``) and writes shards of ``ROWS_PER_SHARD`` rows,
   so a crashed run keeps every shard already written.

Resumable: ``features/manifest.json`` is written first with the hash of everything the features depend
on (:func:`compute_feature_config_hash`: extractor method and weights, encoder identity, sample rate,
F0 range, format version). A rerun with the same hash skips segments already in the table; a different
hash starts over (the old shards are removed). Failed segments are recorded (id, reason) in the result
and manifest and retried on the next run. After each run the table is made to match the dataset
exactly: splits are re-assigned (``features.validation_fraction`` may have changed) and rows of
segments no longer in the dataset are dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rvc_ray import storage
from rvc_ray.errors import InputError
from rvc_ray.features.split import assign_splits, mute_segment_id

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

    from rvc_ray.cluster import StagePlan
    from rvc_ray.config import FeatureConfig, RunConfig
    from rvc_ray.features.content import ContentEncoderInfo

__all__ = ["FEATURE_FORMAT_VERSION", "ExtractResult", "compute_feature_config_hash", "run_extract"]

log = logging.getLogger(__name__)

FEATURE_FORMAT_VERSION = 2  # 2: random encoder biases initialised non-zero (94da4b6)
ROWS_PER_SHARD = 64
MUTE_SECONDS = 3.0
_INPUT_COLUMNS = ["segment_id", "speaker_id", "wav", "wav_16k"]


@dataclass(frozen=True)
class ExtractResult:
    output_dir: Path | str  # a Path for a local table, the URI for one on a bucket
    num_segments: int  # rows in the table after this run (segments + mute rows)
    num_failed: int
    failures: tuple[tuple[str, str], ...]  # (segment_id, reason)
    num_train: int
    num_val: int
    num_mute: int
    num_extracted: int  # rows computed in this run
    num_skipped: int  # rows reused from an earlier run with the same config hash
    throughput: dict[str, float] = field(default_factory=dict)  # stage -> audio-s per wall-s
    wall_seconds: float = 0.0
    content_encoder: str = ""
    learned_content: bool = True
    f0_method: str = ""
    config_hash: str = ""


def _pitch_identity(cfg: RunConfig) -> str:
    from importlib.metadata import PackageNotFoundError, version

    method = cfg.features.f0_method
    if method == "rmvpe":
        path = cfg.features.rmvpe_path
        if path is None or not Path(path).is_file():
            raise FileNotFoundError(
                f"features.f0_method=rmvpe needs a local rmvpe.pt in features.rmvpe_path (got {path}); "
                "or choose fcpe / crepe-tiny / crepe, whose weights ship with their packages"
            )
        stat = Path(path).stat()
        return f"rmvpe:{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    package = "torchfcpe" if method == "fcpe" else "torchcrepe"
    try:
        return f"{method}:{package}={version(package)}"
    except PackageNotFoundError:
        return f"{method}:{package}=unknown"


def compute_feature_config_hash(cfg: RunConfig, encoder: ContentEncoderInfo) -> str:
    """Hash of everything a segment's features depend on (not the split, not the mute count)."""
    f = cfg.features
    relevant = {
        "format": FEATURE_FORMAT_VERSION,
        "pitch": _pitch_identity(cfg),
        "f0_range": [f.f0_min_hz, f.f0_max_hz],
        "crepe_threshold": f.crepe_periodicity_threshold,
        "encoder": encoder.identity,
        "version": cfg.model.version,
        "content_dim": cfg.model.content_dim,
        "sample_rate": cfg.audio.sample_rate,
        "hop_length": cfg.audio.hop_length,
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _parts(directory: str) -> list[str]:
    """The ``part-*.parquet`` files under the location ``directory``, sorted, as locations."""
    return [f for f in storage.list_files(directory, suffix=".parquet") if f.rsplit("/", 1)[-1].startswith("part-")]


def _segment_files(dataset_dir: str) -> list[str]:
    segments = storage.join(dataset_dir, "segments")
    files = _parts(segments)
    if not files:
        raise FileNotFoundError(f"{segments}: no part-*.parquet segment files; run `rvc-ray preprocess` first")
    return files


@dataclass(frozen=True)
class SegmentFile:
    """One ``part-*.parquet`` segment file: its location, its segment ids in order and its row group sizes."""

    location: str
    segment_ids: tuple[str, ...]
    row_group_rows: tuple[int, ...]


def _read_segment_index(files: list[str]) -> tuple[list[tuple[str, int]], list[SegmentFile]]:
    """``(segment_id, speaker_id)`` of every segment, in file order, and each file's :class:`SegmentFile`."""
    rows: list[tuple[str, int]] = []
    index: list[SegmentFile] = []
    for file in files:
        table = storage.read_parquet(file, columns=["segment_id", "speaker_id"])
        ids = table.column("segment_id").to_pylist()
        rows.extend(zip(ids, table.column("speaker_id").to_pylist(), strict=True))
        index.append(SegmentFile(file, tuple(ids), tuple(storage.parquet_row_group_rows(file))))
    seen: set[str] = set()
    dupes = [sid for sid, _ in rows if sid in seen or seen.add(sid)]
    if dupes:
        raise InputError(f"dataset segments contain duplicate segment_id values, e.g. {dupes[:5]}")
    return rows, index


def rows_per_read(rows: int, lanes: int, batch_size: int) -> int:
    """Rows of one read block: about eight blocks per lane (a batch an actor runs at once), in whole batches.

    Ray Data hands a block to one actor (which then runs it batch by batch), so a 52-row file read as one
    block keeps one actor busy and the others idle, and the last block is the stage's tail (one actor
    working, the others done); larger corpora have row groups enough for everyone.
    """
    per_block = -(-rows // (8 * max(1, lanes)))
    return max(batch_size, -(-per_block // batch_size) * batch_size)


def read_slices(
    files: list[SegmentFile], done: set[str], max_rows: int, *, tail_slices: int = 0, tail_rows: int = 1
) -> list[dict[str, Any]]:
    """The read tasks' items: ``{"path", "row_group", "start", "stop"}``, at most ``max_rows`` rows each and
    never across a row group (one row group is read per item); slices whose segments are all done are left out.

    The last ``tail_slices`` are cut again into ``tail_rows`` rows: they are the stage's tail, run while the
    other actors may have nothing left (each reads its row group again: a few reads, once per stage).
    """
    cuts: list[tuple[SegmentFile, int, int, int, int]] = []  # file, row group, its first row, start, stop
    for file in files:
        first = 0
        for group, group_rows in enumerate(file.row_group_rows):
            cuts.extend(
                (file, group, first, start, min(start + max_rows, group_rows))
                for start in range(0, group_rows, max_rows)
            )
            first += group_rows

    def pending(cut: tuple[SegmentFile, int, int, int, int]) -> bool:
        file, _, first, start, stop = cut
        return not done.issuperset(file.segment_ids[first + start : first + stop])

    cuts = [cut for cut in cuts if pending(cut)]
    head, tail = (cuts[:-tail_slices], cuts[-tail_slices:]) if tail_slices else (cuts, [])
    tail = [
        (file, group, first, start, min(start + tail_rows, stop))
        for file, group, first, cut_start, stop in tail
        for start in range(cut_start, stop, tail_rows)
    ]
    return [
        {"path": file.location, "row_group": group, "start": start, "stop": stop}
        for file, group, first, start, stop in head + [cut for cut in tail if pending(cut)]
    ]


def _table_parts(table_dir: str) -> list[str]:
    return _parts(table_dir)


def _prepare_resume(output_dir: str, config_hash: str) -> set[str]:
    """Segment ids already extracted with ``config_hash``; removes a table made with another hash."""
    table_dir = storage.join(output_dir, "table")
    manifest = storage.join(output_dir, "manifest.json")
    previous = json.loads(storage.read_text(manifest)).get("config_hash") if storage.exists(manifest) else None
    parts = _table_parts(table_dir)
    if parts and previous != config_hash:
        log.warning(
            "extract: feature config changed (%s -> %s); removing %d old shards", previous, config_hash, len(parts)
        )
        storage.remove(table_dir)
        return set()
    done: set[str] = set()
    for part in parts:
        done.update(storage.read_parquet(part, columns=["segment_id"]).column("segment_id").to_pylist())
    return done


def _mute_table(cfg: RunConfig, speakers: list[int], done: set[str]) -> pa.Table:
    import pyarrow as pa

    ids, spk = [], []
    for speaker in speakers:
        for k in range(cfg.features.mute_rows_per_speaker):
            if mute_segment_id(speaker, k) not in done:
                ids.append(mute_segment_id(speaker, k))
                spk.append(speaker)
    n_wav, n_16k = int(MUTE_SECONDS * cfg.audio.sample_rate), int(MUTE_SECONDS * 16000)
    return pa.table(
        {
            "segment_id": pa.array(ids, pa.string()),
            "speaker_id": pa.array(spk, pa.int32()),
            "wav": pa.array([np.zeros(n_wav, np.float32)] * len(ids), pa.list_(pa.float32())),
            "wav_16k": pa.array([np.zeros(n_16k, np.float32)] * len(ids), pa.list_(pa.float32())),
            "is_mute": pa.array([True] * len(ids), pa.bool_()),
        }
    )


def _read_and_skip(batch: pa.Table, done: frozenset[str]) -> pa.Table:
    """Map stage: read the row slices named in ``batch`` (:func:`read_slices`), then :func:`_skip_done`."""
    import pyarrow as pa

    tables = [
        storage.read_parquet_row_group(item["path"], item["row_group"], _INPUT_COLUMNS).slice(
            item["start"], item["stop"] - item["start"]
        )
        for item in batch.to_pylist()
    ]
    return _skip_done(pa.concat_tables(tables), done)


def _skip_done(batch: pa.Table, done: frozenset[str]) -> pa.Table:
    """Map stage: drop segments already extracted, cast types, mark rows as not mute."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if done:
        batch = batch.filter(pc.invert(pc.is_in(batch.column("segment_id"), pa.array(sorted(done)))))
    return pa.table(
        {
            "segment_id": batch.column("segment_id").cast(pa.string()),
            "speaker_id": batch.column("speaker_id").cast(pa.int32()),
            "wav": batch.column("wav").cast(pa.list_(pa.float32())),
            "wav_16k": batch.column("wav_16k").cast(pa.list_(pa.float32())),
            "is_mute": pa.array([False] * batch.num_rows, pa.bool_()),
        }
    )


def batches_per_actor(features: FeatureConfig, plan: StagePlan) -> int:
    """How many batches each actor runs at once: :func:`~rvc_ray.features.stages.actor_threads` (on CPU,
    ``features.actor_cpus``), at most the CPUs the plan reserves for it, rounded up (a 2-CPU actor shrunk
    to 1.5 CPUs beside the read tasks still runs two; one capped to a 1-CPU node runs one)."""
    from rvc_ray.features.stages import actor_threads

    return max(1, min(actor_threads(features)[0], math.ceil(plan.cpus_per_actor)))


def actor_pool(num_actors: int, batches_at_once: int) -> ray.data.ActorPoolStrategy:
    """The Ray Data ``ActorPoolStrategy`` of an extraction pool: ``num_actors`` actors, each called
    ``batches_at_once`` times at once, in threads that share the actor's models."""
    import ray

    return ray.data.ActorPoolStrategy(
        size=num_actors,
        max_concurrent_calls_per_actor=batches_at_once,
        enable_true_multi_threading=batches_at_once > 1,
    )


def _build_dataset(
    cfg: RunConfig,
    files: list[SegmentFile],
    done: set[str],
    mute: pa.Table,
    plan: StagePlan,
    batches_at_once: int,
    rows_per_block: int,
):
    import ray

    from rvc_ray.cluster import shorten_ray_data_limits_refresh
    from rvc_ray.features.stages import (
        ContentStage,
        PitchAndContentStage,
        PitchStage,
        stage_actor_resources,
    )

    shorten_ray_data_limits_refresh()

    f = cfg.features
    raw = cfg.model_dump(mode="json")
    device = "cuda" if f.use_gpu else "cpu"

    def actor(stage: str) -> dict[str, float]:
        # CPUs as planned against the cluster (actors shrink to leave room for the read tasks); GPU shares per stage
        return {**stage_actor_resources(f, stage), "num_cpus": plan.cpus_per_actor}

    # the last two blocks of each lane (Ray Data queues two per concurrent call of an actor) in single batches
    lanes = plan.num_actors * batches_at_once
    slices = read_slices(files, done, rows_per_block, tail_slices=2 * lanes, tail_rows=f.batch_size)
    if not slices:
        return ray.data.from_arrow(mute)
    # Parquet is read by our own light task, not ray.data.read_parquet: its file-listing step asks for a whole
    # CPU, which on a 2-CPU cluster whose actors hold 1.5 CPUs never gets one (the stage would wait forever)
    ds = ray.data.from_items(slices, override_num_blocks=len(slices)).map_batches(
        _read_and_skip,
        fn_kwargs={"done": frozenset(done)},
        batch_format="pyarrow",
        num_cpus=plan.cpus_per_task,
        batch_size=1,
        compute=ray.data.TaskPoolStrategy(size=max(1, min(2, len(slices)))),
    )
    if mute.num_rows:
        ds = ds.union(ray.data.from_arrow(mute))
    common = {
        "batch_format": "pyarrow",
        "batch_size": f.batch_size,
        "compute": actor_pool(plan.num_actors, batches_at_once),
        "fn_constructor_kwargs": {"raw_cfg": raw, "device": device},
    }
    if f.fused_stages:
        return ds.map_batches(PitchAndContentStage, **common, **actor("fused"))
    return ds.map_batches(PitchStage, **common, **actor("pitch")).map_batches(
        ContentStage, **common, **actor("content")
    )


def _write_table(table: pa.Table, path: str) -> None:
    storage.write_parquet(table, path, **FEATURE_PARQUET_OPTIONS)


def _write_shard(table: pa.Table, table_dir: str, run_tag: str, index: int) -> str:
    path = storage.join(table_dir, f"part-{run_tag}-{index:05d}.parquet")
    _write_table(table, path)
    return path


# The feature table's columns, in order: the contract read by rvc_ray.data.dataset (training).
FEATURE_TABLE_COLUMNS = [
    "segment_id",
    "speaker_id",
    "split",
    "is_mute",
    "num_frames",
    "content_dim",
    "content",
    "f0_hz",
    "pitch_bins",
    "wav",
    "wav_16k",
]
FEATURE_PARQUET_OPTIONS = storage.parquet_options_for_lists(
    FEATURE_TABLE_COLUMNS, ("content", "f0_hz", "pitch_bins", "wav", "wav_16k"), dictionary=["segment_id", "split"]
)


def _split_column(ids: list[str], mute: list[bool], splits: dict[str, str]) -> list[str]:
    """The ``split`` of each row: its assigned split; mute rows and rows without one train."""
    return ["train" if m else splits.get(sid, "train") for sid, m in zip(ids, mute, strict=True)]


def _with_split(table: pa.Table, splits: dict[str, str]) -> pa.Table:
    import pyarrow as pa

    ids, mute = table.column("segment_id").to_pylist(), table.column("is_mute").to_pylist()
    split = pa.array(_split_column(ids, mute, splits), pa.string())
    if "split" in table.column_names:
        table = table.drop_columns(["split"])
    return table.append_column("split", split).select(FEATURE_TABLE_COLUMNS)


def _stream_and_write(ds, table_dir: str, splits: dict[str, str], total: int) -> dict[str, Any]:
    import pyarrow as pa

    run_tag = uuid.uuid4().hex[:8]
    stats = {"failures": [], "written": 0, "audio_s": 0.0, "pitch_s": 0.0, "content_s": 0.0, "shards": 0}
    pending: list[pa.Table] = []
    buffered = 0
    start = time.perf_counter()

    def flush():
        nonlocal pending, buffered
        if pending:
            _write_shard(_with_split(pa.concat_tables(pending), splits), table_dir, run_tag, stats["shards"])
            stats["shards"] += 1
            pending, buffered = [], 0

    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        if batch.num_rows == 0:
            continue
        errors = batch.column("error").to_pylist()
        ids = batch.column("segment_id").to_pylist()
        stats["failures"].extend((sid, err) for sid, err in zip(ids, errors, strict=True) if err is not None)
        stats["pitch_s"] += float(np.sum(batch.column("pitch_seconds").to_numpy()))
        stats["content_s"] += float(np.sum(batch.column("content_seconds").to_numpy()))
        ok = batch.filter(batch.column("error").is_null())
        stats["audio_s"] += float(np.sum(ok.column("num_frames").to_numpy())) / 100.0
        pending.append(ok.drop_columns(["error", "pitch_seconds", "content_seconds"]))
        buffered += ok.num_rows
        stats["written"] += ok.num_rows
        if buffered >= ROWS_PER_SHARD:
            flush()
        done = stats["written"] + len(stats["failures"])
        elapsed = time.perf_counter() - start
        log.info(
            "extract: %d/%d rows (%d failed), %.1f audio-s/s",
            done,
            total,
            len(stats["failures"]),
            stats["audio_s"] / max(elapsed, 1e-9),
        )
    flush()
    return stats


def _reconcile_table(table_dir: str, validation_fraction: float, expected: set[str]) -> dict[str, int]:
    """Assign splits over the rows present and drop rows not in the dataset any more; returns row counts.

    Splitting over the rows actually extracted (not the dataset) keeps the per-speaker guarantees of
    :func:`~rvc_ray.features.split.assign_splits` when some segments failed. Only the four small columns of
    each part are read; a part is read whole and rewritten only when a row must go or a split changes (after
    failures or a resume), so a clean run does not read its features back.
    """
    import pyarrow as pa

    keys = ["segment_id", "speaker_id", "is_mute", "split"]
    metas = {part: storage.read_parquet(part, columns=keys) for part in _table_parts(table_dir)}
    present: list[tuple[str, int]] = []
    for meta in metas.values():
        for sid, spk, mute in zip(*(meta.column(c).to_pylist() for c in keys[:3]), strict=True):
            if sid in expected and not mute:
                present.append((sid, spk))
    splits = assign_splits(present, validation_fraction)
    counts = {"rows": 0, "train": 0, "val": 0, "mute": 0}
    for part, meta in metas.items():
        ids, mute = meta.column("segment_id").to_pylist(), meta.column("is_mute").to_pylist()
        keep = [sid in expected for sid in ids]
        split = [s for s, k in zip(_split_column(ids, mute, splits), keep, strict=True) if k]
        if not any(keep):
            log.info("extract: removing %s (none of its %d rows is in the dataset)", part, len(ids))
            storage.remove(part)
        elif not all(keep) or split != meta.column("split").to_pylist():
            log.info("extract: updating %s (%d -> %d rows, splits re-assigned)", part, len(ids), len(split))
            table = storage.read_parquet(part)
            _write_table(_with_split(table.filter(pa.array(keep, pa.bool_())), splits), part)
        counts["rows"] += len(split)
        counts["train"] += split.count("train")
        counts["val"] += split.count("val")
        counts["mute"] += sum(m for m, k in zip(mute, keep, strict=True) if k)
    return counts


def _write_manifest(output_dir: str, payload: dict[str, Any]) -> None:
    storage.write_text(storage.join(output_dir, "manifest.json"), json.dumps(payload, indent=2, default=str))


def run_extract(
    cfg: RunConfig, dataset_dir: Path | str, output_dir: Path | str, *, locations_checked: bool = False
) -> ExtractResult:
    """Extract F0 and content features for every segment of ``dataset_dir`` into ``output_dir``.

    Both are locations (local paths or URIs, :mod:`rvc_ray.storage`): Ray Data reads the segments from
    there and the feature shards are written there. Unless ``locations_checked``, every node of the cluster
    must first prove it can read the one and write the other (:func:`rvc_ray.cluster.check_locations_on_cluster`).

    Raises:
        FileNotFoundError: no segments, or configured weights missing (named).
        StorageError: a node cannot read ``dataset_dir`` or write ``output_dir`` (before any work).
    """
    from rvc_ray.cluster import check_locations_on_cluster, ensure_ray, extraction_plan
    from rvc_ray.features.content import describe_content_encoder

    start = time.perf_counter()
    dataset_dir = storage.normalize_location(str(dataset_dir))
    output_dir = storage.normalize_location(str(output_dir))
    if not locations_checked:
        check_locations_on_cluster(reads=[("dataset", dataset_dir)], writes=[("features", output_dir)])
    table_dir = storage.join(output_dir, "table")
    segments, files = _read_segment_index(_segment_files(dataset_dir))
    speakers = sorted({spk for _, spk in segments})
    splits = assign_splits(segments, cfg.features.validation_fraction)
    expected = {sid for sid, _ in segments} | {
        mute_segment_id(s, k) for s in speakers for k in range(cfg.features.mute_rows_per_speaker)
    }
    encoder = describe_content_encoder(cfg.features, cfg.model)
    config_hash = compute_feature_config_hash(cfg, encoder)
    if not encoder.learned_content:
        log.warning("extract: %s", encoder.description)
    done = _prepare_resume(output_dir, config_hash) & expected
    manifest: dict[str, Any] = {
        "status": "running",
        "config_hash": config_hash,
        "feature_format_version": FEATURE_FORMAT_VERSION,
        "f0_method": cfg.features.f0_method,
        "pitch_extractor": _pitch_identity(cfg),
        "content_encoder": encoder.to_json(),
        "sample_rate": cfg.audio.sample_rate,
        "hop_length": cfg.audio.hop_length,
        "content_dim": cfg.model.content_dim,
        "validation_fraction": cfg.features.validation_fraction,
        "mute_rows_per_speaker": cfg.features.mute_rows_per_speaker,
        "dataset_dir": dataset_dir,
        "config": cfg.model_dump(mode="json"),
    }
    _write_manifest(output_dir, manifest)
    mute = _mute_table(cfg, speakers, done)
    segments_todo = sum(1 for segment_id, _ in segments if segment_id not in done)
    todo = segments_todo + mute.num_rows
    stats = {"failures": [], "written": 0, "audio_s": 0.0, "pitch_s": 0.0, "content_s": 0.0}
    lanes = 0  # batches computed at once
    if todo:
        ensure_ray(dashboard=False)  # this process runs no Ray Train (rvc_ray.pipeline starts Ray itself first)
        f = cfg.features
        plan = extraction_plan(
            f.num_actors, f.actor_cpus, stages=1 if f.fused_stages else 2, max_actors=-(-todo // f.batch_size)
        )
        log.info(
            "extract: %d rows to compute, %d reused (f0=%s, encoder=%s; %d %s actors)",
            todo,
            len(done),
            f.f0_method,
            encoder.description,
            plan.num_actors,
            "pitch+content" if f.fused_stages else "pitch and content",
        )
        batches_at_once = batches_per_actor(f, plan)
        lanes = plan.num_actors * batches_at_once
        rows_per_block = rows_per_read(segments_todo, lanes, f.batch_size)
        dataset = _build_dataset(cfg, files, done, mute, plan, batches_at_once, rows_per_block)
        stats = _stream_and_write(dataset, table_dir, splits, todo)
    counts = _reconcile_table(table_dir, cfg.features.validation_fraction, expected)
    wall = time.perf_counter() - start
    throughput = {
        "pitch": stats["audio_s"] / max(stats["pitch_s"] / lanes, 1e-9) if stats["pitch_s"] else 0.0,
        "content": stats["audio_s"] / max(stats["content_s"] / lanes, 1e-9) if stats["content_s"] else 0.0,
        "end_to_end": stats["audio_s"] / wall,
    }
    failures = tuple(sorted(stats["failures"]))
    result = ExtractResult(
        output_dir=storage.as_local_or_uri(output_dir),
        num_segments=counts["rows"],
        num_failed=len(failures),
        failures=failures,
        num_train=counts["train"],
        num_val=counts["val"],
        num_mute=counts["mute"],
        num_extracted=stats["written"],
        num_skipped=len(done),
        throughput=throughput,
        wall_seconds=wall,
        content_encoder=encoder.description,
        learned_content=encoder.learned_content,
        f0_method=cfg.features.f0_method,
        config_hash=config_hash,
    )
    manifest.update(
        status="complete",
        counts=counts,
        failures=[list(f) for f in failures],
        throughput_audio_s_per_s=throughput,
        wall_seconds=wall,
        num_extracted=stats["written"],
        num_skipped=len(done),
    )
    _write_manifest(output_dir, manifest)
    log.info(
        "extract: done, %d rows (%d train, %d val, %d mute), %d failed, %.1f s; throughput %s",
        counts["rows"],
        counts["train"],
        counts["val"],
        counts["mute"],
        len(failures),
        wall,
        {k: round(v, 2) for k, v in throughput.items()},
    )
    return result
