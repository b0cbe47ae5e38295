"""``run_preprocess``: raw recordings -> readiness report -> Ray tasks -> Parquet dataset.

Order of work:

1. discover speakers and files (:mod:`.discovery`);
2. if ``manifest.json`` says the same config and the same input files (path, size, mtime) produced the
   shards that are there, return at once (a rerun is a no-op);
3. the readiness pass over every file (:mod:`.inspection`), written as ``report.json``/``report.txt``
   and printed, before any heavy work; an ``insufficient`` verdict is a loud warning, not an error;
4. the per-file function (:func:`.shards.iter_file_tables`) over all good files, in groups of
   :data:`FILES_PER_GROUP` consecutive files, as Ray tasks over every CPU of the cluster
   (``use_ray=True``) or as a plain loop (``use_ray=False``, same function, used by the benchmark and fast
   tests), a few groups per task (:func:`groups_per_task`). Each group's worker writes its own fixed-size shards ``part-<group>-<n>.parquet``
   (:class:`.shards.ShardWriter`), so audio never travels through the driver, and only small outcome
   summaries come back: byte-identical on a rerun, whatever the cluster size. ``output_dir`` is a location
   (:mod:`rvc_ray.storage`): on a bucket (``s3://...``) each worker writes its shards to a local temporary
   folder and uploads them; input folders may be URIs too (:mod:`.remote_inputs`, read by the workers);
5. the final report, then the manifest (written last: its presence marks a complete dataset), and one
   throughput line (audio seconds per wall second).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from rvc_ray import storage
from rvc_ray.audio.io import AudioDecodeError, probe_audio
from rvc_ray.config import PreprocessConfig, RunConfig
from rvc_ray.errors import InputError
from rvc_ray.preprocess.discovery import InputDiscovery, SourceFile, discover_inputs
from rvc_ray.preprocess.inspection import (
    FileInspection,
    files_measured_later,
    inspect_file,
    merge_measured,
    readiness_view,
)
from rvc_ray.preprocess.remote_inputs import RemoteInputs, localize_source, mirror_inputs
from rvc_ray.preprocess.report import build_report, format_report_text, write_report
from rvc_ray.preprocess.shards import ShardInfo, ShardWriter, iter_file_tables

__all__ = ["BadFile", "FORMAT_VERSION", "PreprocessResult", "run_preprocess"]

FORMAT_VERSION = 1
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BadFile:
    """A file that was skipped, with the specific reason."""

    path: str
    reason: str


@dataclass(frozen=True)
class PreprocessResult:
    """What :func:`run_preprocess` did. ``throughput`` is audio seconds per wall second.

    ``output_dir``, ``report_path`` and ``manifest_path`` are :class:`Path` s for a local dataset and URI
    strings for one on a bucket.
    """

    output_dir: Path | str
    num_input_files: int
    num_segments: int
    bad_files: tuple[BadFile, ...]
    audio_seconds_in: float
    wall_seconds: float
    throughput: float
    report_path: Path | str
    verdict: str
    manifest_path: Path | str
    num_shards: int
    reused: bool = False


def _config_section(cfg: RunConfig) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "preprocess": cfg.preprocess.model_dump(mode="json"),
        "sample_rate": cfg.audio.sample_rate,
    }


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _fingerprints(discovery: InputDiscovery, remote: RemoteInputs) -> list[dict[str, Any]]:
    entries = []
    for f in discovery.files:
        stat = f.path.stat()  # a remote input's skeleton file has the object's size and mtime
        entries.append(
            {
                "path": remote.display(f.path),
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "speaker_id": f.speaker_id,
            }
        )
    return entries


def _reuse_if_current(output_dir: str, config_hash: str, inputs_hash: str, started: float) -> PreprocessResult | None:
    manifest_path = storage.join(output_dir, "manifest.json")
    try:
        manifest = json.loads(storage.read_text(manifest_path))
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("config_hash") != config_hash or manifest.get("inputs_hash") != inputs_hash:
        return None
    segments_dir = storage.join(output_dir, "segments")
    for shard in manifest.get("shards", []):
        try:
            size, _ = storage.file_info(storage.join(segments_dir, shard["name"]))
        except OSError:
            return None
        if size != shard["num_bytes"]:
            return None
    counts = manifest["counts"]
    wall = time.perf_counter() - started
    print(f"preprocess: {output_dir} is up to date (same config and inputs); nothing to do")
    return PreprocessResult(
        output_dir=storage.as_local_or_uri(output_dir),
        num_input_files=counts["num_input_files"],
        num_segments=counts["num_segments"],
        bad_files=tuple(BadFile(**b) for b in manifest["bad_files"]),
        audio_seconds_in=counts["audio_seconds_in"],
        wall_seconds=wall,
        throughput=0.0,
        report_path=storage.as_local_or_uri(storage.join(output_dir, "report.json")),
        verdict=manifest["verdict"],
        manifest_path=storage.as_local_or_uri(manifest_path),
        num_shards=len(manifest["shards"]),
        reused=True,
    )


FILES_PER_GROUP = 4  # input files per worker task: fixed, so the output bytes do not depend on the cluster


def file_groups(files: Sequence[SourceFile]) -> list[list[SourceFile]]:
    """Consecutive groups of :data:`FILES_PER_GROUP` files: the unit of work (and of shard naming)."""
    return [list(files[i : i + FILES_PER_GROUP]) for i in range(0, len(files), FILES_PER_GROUP)]


def process_file_group(
    group_index: int,
    files: Sequence[SourceFile],
    cfg: RunConfig,
    segments_dir: str | Path,
    source_uris: dict[int, str] | None = None,
    measured: Collection[int] = (),
) -> tuple[dict[int, dict], list[ShardInfo]]:
    """Process ``files`` in order and write their segments to ``part-<group_index>-NNNNN.parquet`` shards.

    Runs in a Ray worker (or in the driver's loop), so the audio is written where it is computed: straight
    into a local ``segments_dir``, or through a local temporary folder uploaded to a remote one. Files whose
    ``source_index`` is in ``source_uris`` are read from that URI (and recorded under it); those in
    ``measured`` also get their readiness figures measured on the way (``outcome["readiness"]``).
    Returns the per-file outcome summaries (by source index) and the shards written.
    """
    import tempfile

    import pyarrow as pa

    location = storage.normalize_location(str(segments_dir))
    staging = tempfile.mkdtemp(prefix="rvc-shards-") if storage.is_remote(location) else None
    writer = ShardWriter(Path(staging or location), cfg.preprocess.rows_per_shard, prefix=f"part-{group_index:05d}")
    uris = source_uris or {}
    try:
        for given in files:
            uri = uris.get(given.source_index)
            with localize_source(given, uri) as source:
                measure = given.source_index in measured
                for table in iter_file_tables(source, cfg.preprocess, cfg.audio.sample_rate, measure=measure):
                    if uri is not None:  # record where the file is, not the worker's temporary copy
                        column = table.schema.get_field_index("source_path")
                        values = [None if v is None else uri for v in table.column(column).to_pylist()]
                        table = table.set_column(column, "source_path", pa.array(values, pa.string()))
                    writer.write(table)
        shards = writer.close(allow_no_shard=True)
        if staging is not None:
            for shard in shards:
                storage.upload_file(Path(staging) / shard.name, storage.join(location, shard.name))
    finally:
        if staging is not None:
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    return writer.outcomes, shards


MAX_GROUPS_PER_TASK = 4


def groups_per_task(num_groups: int, slots: int) -> int:
    """How many file groups one Ray task processes: about 4 tasks per slot, 1 to ``MAX_GROUPS_PER_TASK``.

    A task of a few groups pays the per-task costs (scheduling, the result's round trip, the config's
    validation) once; four tasks per slot keep the tail short (no slot waits long for the last, larger
    task). Groups stay the unit of shard naming, so the output bytes do not depend on this number.
    """
    if num_groups < 1 or slots < 1:
        raise ValueError(f"need at least one group and one slot, got {num_groups} groups, {slots} slots")
    return max(1, min(MAX_GROUPS_PER_TASK, num_groups // (4 * slots)))


def task_resources(
    cfg: RunConfig,
    nodes: Sequence[dict[str, Any]],
    node_types: Sequence[tuple[Mapping[str, float], int]] = (),
) -> dict[str, float | int]:
    """``num_cpus``/``memory`` of one preprocessing task, checked against the largest node, alive or addable.

    A request no node can hold would leave the tasks waiting forever; this fails at once instead. A request
    that only a node type of the autoscaler can hold (a 0-CPU head with autoscaling CPU workers) is kept:
    Ray waits while the autoscaler adds that node. Node types that do not declare ``memory`` are assumed
    to hold the memory request.

    Args:
        nodes: ``ray.nodes()``.
        node_types: the autoscaler's ``(resources, max_count)`` node groups (``rvc_ray.cluster.autoscaler_node_types``).

    Raises:
        InputError: ``preprocess.cpus_per_task`` or ``preprocess.memory_gb_per_task`` exceeds every node.
    """
    import math

    from rvc_ray.cluster import ClusterCapacity

    pp = cfg.preprocess
    memory = int(pp.memory_gb_per_task * 2**30)
    capacity = ClusterCapacity(tuple(n.get("Resources", {}) for n in nodes if n.get("Alive", True)), tuple(node_types))
    max_cpus = capacity.largest("CPU")
    max_memory = capacity.largest("memory", unknown_in_types=math.inf)
    if pp.cpus_per_task > max_cpus:
        raise InputError(
            f"preprocess.cpus_per_task={pp.cpus_per_task} is more than the largest node has ({max_cpus:g} CPUs), "
            "counting the node types the autoscaler can add"
        )
    if memory > max_memory:
        raise InputError(
            f"preprocess.memory_gb_per_task={pp.memory_gb_per_task:g} is more than the largest node's Ray memory "
            f"({max_memory / 2**30:.1f} GiB); lower it or add memory"
        )
    return {"num_cpus": pp.cpus_per_task, "memory": memory}


def _task_resources_on_cluster(cfg: RunConfig) -> dict[str, float | int]:
    """:func:`task_resources` on the connected cluster. A request the alive nodes refuse is read again once
    the autoscaler's monitor has reported (it reports nothing for its first seconds after the head starts)."""
    import ray

    from rvc_ray.cluster import MONITOR_FIRST_REPORT_WAIT_S, autoscaler_node_types, cluster_capacity

    node_types = cluster_capacity().node_types
    try:
        return task_resources(cfg, ray.nodes(), node_types)
    except InputError:
        if node_types:
            raise
        return task_resources(cfg, ray.nodes(), autoscaler_node_types(wait_s=MONITOR_FIRST_REPORT_WAIT_S))


def _task_slots(cfg: RunConfig, cluster_cpus: float) -> int:
    """Concurrent preprocessing tasks on ``cluster_cpus`` CPUs: the CPUs over ``preprocess.cpus_per_task``
    (this machine's cores on the local cluster: :func:`rvc_ray.cluster.cores_for_cpu_bound_work`)."""
    from rvc_ray.cluster import cores_for_cpu_bound_work

    return max(1, int(cores_for_cpu_bound_work(cluster_cpus) // cfg.preprocess.cpus_per_task))


def _cpu_slots(cfg: RunConfig, num_items: int) -> int:
    """Tasks that can run at once: the CPUs the cluster has or can grow to (at most one per item)."""
    from rvc_ray.cluster import cluster_capacity

    return _task_slots(cfg, min(cluster_capacity().cpus_max, num_items * cfg.preprocess.cpus_per_task))


GroupResult = tuple[int, dict[int, dict], list[ShardInfo]]  # (group index, outcomes by source index, shards)


def _process_groups(rows: Sequence[dict[str, Any]], raw_config: dict[str, Any], segments_dir: str) -> list[GroupResult]:
    """Ray task body: rows (one group of files each) -> ``(group_index, outcomes, shards)`` per group."""
    cfg = RunConfig.model_validate(raw_config)
    results = []
    for row in rows:
        files = [
            SourceFile(Path(f["path"]), f["speaker_id"], f["speaker_name"], f["source_index"]) for f in row["files"]
        ]
        uris = {f["source_index"]: f["uri"] for f in row["files"] if f["uri"]}
        measured = {f["source_index"] for f in row["files"] if f["measure"]}
        outcomes, shards = process_file_group(row["group_index"], files, cfg, segments_dir, uris, measured)
        results.append((row["group_index"], outcomes, shards))
    return results


def _run_groups_with_ray(
    cfg: RunConfig,
    groups: Sequence[Sequence[SourceFile]],
    segments_dir: str,
    remote: RemoteInputs,
    measured: Collection[int],
) -> list[tuple[dict[int, dict], list[ShardInfo]]]:
    """Run the groups as plain Ray tasks, at most one per CPU slot in flight, the next submitted as one ends.

    Not Ray Data: the tasks write their own shards and return small summaries, so there is nothing to
    stream, and Ray Data would add its stats and autoscaling-coordinator actors (a worker process each,
    ~2.5 CPU-s and ~0.25 GB on 2 cores) and its import in the driver and every worker (docs/benchmarks.md).
    """
    import ray

    _start_ray()
    slots = _cpu_slots(cfg, len(groups))
    resources = _task_resources_on_cluster(cfg)
    per_task = groups_per_task(len(groups), slots)
    items = _group_items(groups, remote, measured)
    task = ray.remote(_process_groups).options(**resources)
    args = (ray.put(cfg.model_dump(mode="json")), str(segments_dir))
    batches = iter([items[i : i + per_task] for i in range(0, len(items), per_task)])
    in_flight = [task.remote(batch, *args) for batch in itertools.islice(batches, slots)]
    by_group: dict[int, tuple[dict[int, dict], list[ShardInfo]]] = {}
    while in_flight:
        done, in_flight = ray.wait(in_flight, num_returns=1)
        for group_index, outcomes, shards in ray.get(done[0]):
            by_group[group_index] = (outcomes, shards)
        in_flight += [task.remote(batch, *args) for batch in itertools.islice(batches, 1)]
    return _in_group_order(by_group, len(groups))


def _group_items(
    groups: Sequence[Sequence[SourceFile]], remote: RemoteInputs, measured: Collection[int]
) -> list[dict[str, Any]]:
    """The task arguments of every file group (plain data: they cross to Ray or worker processes)."""
    return [
        {
            "group_index": index,
            "files": [
                {"path": str(f.path), "speaker_id": f.speaker_id, "speaker_name": f.speaker_name,
                 "source_index": f.source_index, "uri": remote.uri_of.get(str(f.path), ""),
                 "measure": f.source_index in measured}
                for f in group
            ],
        }
        for index, group in enumerate(groups)
    ]  # fmt: skip


def _in_group_order(
    by_group: dict[int, tuple[dict[int, dict], list[ShardInfo]]], num_groups: int
) -> list[tuple[dict[int, dict], list[ShardInfo]]]:
    if sorted(by_group) != list(range(num_groups)):
        raise RuntimeError(f"preprocess: the tasks returned {len(by_group)} group results for {num_groups} groups")
    return [by_group[index] for index in range(num_groups)]


def _run_groups_in_processes(
    cfg: RunConfig,
    groups: Sequence[Sequence[SourceFile]],
    segments_dir: str,
    remote: RemoteInputs,
    measured: Collection[int],
    pool: Executor,
    slots: int,
) -> list[tuple[dict[int, dict], list[ShardInfo]]]:
    """The Ray path's tasks (:func:`_process_groups`, as many groups each) in this machine's worker processes."""
    items = _group_items(groups, remote, measured)
    per_task = groups_per_task(len(groups), slots)
    raw = cfg.model_dump(mode="json")
    futures = [
        pool.submit(_process_groups, items[i : i + per_task], raw, segments_dir) for i in range(0, len(items), per_task)
    ]
    by_group = {group_index: (outcomes, shards) for f in futures for group_index, outcomes, shards in f.result()}
    return _in_group_order(by_group, len(groups))


Engine = Literal["ray", "processes", "loop"]


def choose_engine(pp: PreprocessConfig, use_ray: bool) -> Engine:
    """Where the per-file work runs: ``loop`` (``use_ray=False``: this process), ``ray`` (tasks on the cluster
    this process is connected to or told to join, or always with ``preprocess.engine: ray``) or
    ``processes`` (worker processes on this machine: no cluster in use, so none is started for this stage)."""
    from rvc_ray.cluster import cluster_in_use

    if not use_ray:
        return "loop"
    return "ray" if pp.engine == "ray" or cluster_in_use() else "processes"


def _local_slots(cfg: RunConfig) -> int:
    """Worker processes on this machine: its cores over ``preprocess.cpus_per_task``."""
    return _task_slots(cfg, float(os.cpu_count() or 1))


def _prepare_segments_dir(output_dir: str) -> str:
    segments_dir = storage.join(output_dir, "segments")
    storage.makedirs(segments_dir)
    storage.remove(storage.join(output_dir, "manifest.json"))  # no manifest until the dataset is complete
    for old in storage.list_files(segments_dir, suffix=".parquet"):
        if old.rsplit("/", 1)[-1].startswith("part-"):
            storage.remove(old)
    return segments_dir


def _inspect_files(
    files: Sequence[SourceFile], raw_preprocess: dict[str, Any], uris: dict[int, str] | None = None
) -> list[FileInspection]:
    """Inspect ``files`` (those in ``uris`` are read from there and reported under their URI).

    Files whose figures the main pass can measure (:func:`.inspection.measurable_while_processing`: integer
    PCM WAV) get the header checks only, so they are decoded once, not twice.
    """
    pp = PreprocessConfig.model_validate(raw_preprocess)
    found = []
    for given in files:
        uri = (uris or {}).get(given.source_index)
        with localize_source(given, uri) as source:
            inspection = inspect_file(source, pp, header_only_if_measurable=True)
        found.append(replace(inspection, path=uri) if uri is not None else inspection)
    return found


# Up to this much audio (header durations), the driver runs the readiness pass itself while Ray starts: it
# reads about 1000 s of audio per CPU-second, so 2 h take ~7 s of one core, no longer than starting Ray
# and new worker processes for it (docs/dataset.md, Performance).
LOCAL_READINESS_MAX_S = 7200.0


def _header_seconds(files: Sequence[SourceFile]) -> float:
    """Total duration by the file headers (unreadable files count 0; the readiness pass reports them)."""
    total = 0.0
    for f in files:
        try:
            total += probe_audio(f.path).duration_s
        except (AudioDecodeError, OSError):
            continue
    return total


def _start_ray() -> None:
    from rvc_ray.cluster import ensure_ray

    ensure_ray(dashboard=False)  # this process runs no Ray Train (rvc_ray.pipeline starts Ray itself first)


def _inspect_all(
    cfg: RunConfig, discovery: InputDiscovery, engine: Engine, remote: RemoteInputs, pool: Executor | None = None
) -> list[FileInspection]:
    """The readiness pass: in a loop (in a thread while Ray starts, for up to :data:`LOCAL_READINESS_MAX_S`
    of local audio), or in Ray tasks or the worker ``pool`` (groups of files, one per CPU slot, twice over)."""
    files = list(discovery.files)
    raw = cfg.preprocess.model_dump(mode="json")
    uris = {f.source_index: remote.uri_of[str(f.path)] for f in files if str(f.path) in remote.uri_of}
    if engine == "loop" or len(files) < 2:
        return _inspect_files(files, raw, uris)
    short = not uris and _header_seconds(files) <= LOCAL_READINESS_MAX_S
    if engine == "processes":
        if short or pool is None:  # the workers are starting meanwhile
            return _inspect_files(files, raw, uris)
        groups = _readiness_groups(files, _local_slots(cfg))
        found = [future.result() for future in [pool.submit(_inspect_files, g, raw, uris) for g in groups]]
    else:
        if short:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="readiness") as thread:
                inspections = thread.submit(_inspect_files, files, raw)
                _start_ray()
                return inspections.result()
        import ray

        _start_ray()
        task = ray.remote(**_task_resources_on_cluster(cfg))(_inspect_files)
        found = ray.get([task.remote(g, raw, uris) for g in _readiness_groups(files, _cpu_slots(cfg, len(files)))])
    by_source = {inspection.source_index: inspection for group in found for inspection in group}
    return [by_source[f.source_index] for f in files]


def _readiness_groups(files: list[SourceFile], slots: int) -> list[list[SourceFile]]:
    """Files dealt into two groups per CPU slot (round robin, so long and short files mix)."""
    return [files[i :: 2 * slots] for i in range(min(len(files), 2 * slots))]


def run_preprocess(
    cfg: RunConfig,
    inputs: Sequence[Path | str],
    output_dir: Path | str,
    *,
    use_ray: bool = True,
    force: bool = False,
    locations_checked: bool = False,
) -> PreprocessResult:
    """Turn raw recordings into the Parquet segment dataset of the shared contract (docs/dataset.md).

    Args:
        cfg: the run configuration (``preprocess`` and ``audio.sample_rate`` are used).
        inputs: one folder of speaker sub-folders, one speaker folder, or several speaker folders; local
            paths or URIs (``s3://bucket/recordings``).
        output_dir: the dataset location (``RunLayout.dataset_location``), a local path or a URI:
            ``segments/part-*.parquet``, ``manifest.json``, ``report.json``, ``report.txt``.
        use_ray: run the per-file work as Ray tasks on the cluster (``ensure_ray()``); ``False``
            runs the same per-file function in a plain loop in this process.
        force: redo the work even when the manifest says the dataset is current.
        locations_checked: the caller already checked ``inputs`` and ``output_dir`` on every node.

    Raises:
        FileNotFoundError / NotADirectoryError / ValueError: an input folder is missing or given twice.
        StorageError: with ``use_ray``, a node of the cluster cannot read an input or write ``output_dir``.
    """
    with mirror_inputs(inputs) as remote:
        # a missing or repeated input folder is named before anything touches the cluster
        discovery = remote.with_uris(discover_inputs(list(remote.roots), cfg.preprocess.extensions))
        engine = choose_engine(cfg.preprocess, use_ray)
        if engine == "ray" and not locations_checked:
            from rvc_ray.cluster import check_locations_on_cluster

            check_locations_on_cluster(
                reads=[("input folder", storage.normalize_location(str(i))) for i in inputs],
                writes=[("dataset", storage.normalize_location(str(output_dir)))],
            )
        output = storage.normalize_location(str(output_dir))
        if engine != "processes":
            return _run_preprocess(cfg, remote, discovery, output, engine, force)
        with contextlib.ExitStack() as pool_scope:
            return _run_preprocess(cfg, remote, discovery, output, engine, force, pool_scope)


def _run_preprocess(
    cfg: RunConfig,
    remote: RemoteInputs,
    discovery: InputDiscovery,
    output_dir: str,
    engine: Engine,
    force: bool,
    pool_scope: contextlib.ExitStack | None = None,
) -> PreprocessResult:
    started = time.perf_counter()
    pp = cfg.preprocess
    config_hash = _digest(_config_section(cfg))
    fingerprints = _fingerprints(discovery, remote)
    inputs_hash = _digest({"files": fingerprints, "skipped": [remote.display(s.path) for s in discovery.skipped]})
    if not force:
        reused = _reuse_if_current(output_dir, config_hash, inputs_hash, started)
        if reused is not None:
            return reused

    pool = None
    if pool_scope is not None:  # processes: started now (a rerun with nothing to do above starts none)
        from rvc_ray.preprocess.local_processes import local_worker_pool

        threads = max(1, int(cfg.preprocess.cpus_per_task))
        pool = pool_scope.enter_context(local_worker_pool(_local_slots(cfg), threads))
    inspections = _inspect_all(cfg, discovery, engine, remote, pool)
    later = files_measured_later(inspections)
    readiness = build_report(discovery, readiness_view(inspections, later), pp)
    report_path = write_report(readiness, output_dir)
    print(format_report_text(readiness), end="")
    if readiness["verdict"] == "insufficient":
        _warn_insufficient(pp, output_dir, "continuing anyway")

    segments_dir = _prepare_segments_dir(output_dir)
    good = [f for f, i in zip(discovery.files, inspections, strict=True) if not i.is_bad]
    groups = file_groups(good)
    uris = {f.source_index: remote.uri_of[str(f.path)] for f in good if str(f.path) in remote.uri_of}
    if engine == "ray" and groups:
        results = _run_groups_with_ray(cfg, groups, segments_dir, remote, later)
    elif pool is not None and groups:
        results = _run_groups_in_processes(cfg, groups, segments_dir, remote, later, pool, _local_slots(cfg))
    else:
        results = [
            process_file_group(index, group, cfg, segments_dir, uris, later) for index, group in enumerate(groups)
        ]
    outcomes = {index: summary for group_outcomes, _ in results for index, summary in group_outcomes.items()}
    shards = [shard for _, group_shards in results for shard in group_shards]
    if not shards:  # no segment at all: still leave one (empty) shard with the schema
        shards = _empty_shard(segments_dir, pp.rows_per_shard)

    inspections = merge_measured(inspections, outcomes)
    final = build_report(discovery, inspections, pp, outcomes)
    if final["verdict"] == "insufficient" and readiness["verdict"] != "insufficient":  # known only now
        _warn_insufficient(pp, output_dir, "measured while processing")
    report_path = write_report(final, output_dir)
    wall = time.perf_counter() - started
    audio_in = sum(float(o["audio_seconds"]) for o in outcomes.values())
    num_segments = sum(s.num_rows for s in shards)
    throughput = audio_in / wall if wall > 0 else 0.0
    bad_files = tuple(BadFile(b["path"], b["reason"]) for b in final["bad_files"])
    manifest = {
        "format_version": FORMAT_VERSION,
        "config_hash": config_hash,
        "inputs_hash": inputs_hash,
        "config": _config_section(cfg),
        "inputs": [remote.display(Path(p).expanduser().resolve()) for p in remote.roots],
        "speakers": [
            {
                "speaker_id": s.speaker_id,
                "name": s.name,
                "folders": [remote.display(f) for f in s.folders],
                "assigned_by": s.assigned_by,
            }
            for s in discovery.speakers
        ],
        "files": fingerprints,
        "skipped_files": final["skipped_files"],
        "bad_files": [{"path": b.path, "reason": b.reason} for b in bad_files],
        "counts": {
            "num_input_files": len(discovery.files),
            "num_segments": num_segments,
            "num_bad_files": len(bad_files),
            "audio_seconds_in": round(audio_in, 3),
            "segments_per_speaker": {str(s["speaker_id"]): s.get("num_segments", 0) for s in final["speakers"]},
        },
        "shards": [vars(s) for s in shards],
        "verdict": final["verdict"],
        "engine": engine,
        "wall_seconds": round(wall, 3),
    }
    manifest_path = storage.join(output_dir, "manifest.json")
    storage.write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")  # atomic on a local disk
    print(
        f"preprocess: {audio_in:.1f} s of audio from {len(good)} files in {wall:.2f} s wall = "
        f"{throughput:.1f} audio-s per wall-s; {num_segments} segments in {len(shards)} shard(s), "
        f"{len(bad_files)} bad file(s); {segments_dir}"
    )
    return PreprocessResult(
        output_dir=storage.as_local_or_uri(output_dir),
        num_input_files=len(discovery.files),
        num_segments=num_segments,
        bad_files=bad_files,
        audio_seconds_in=audio_in,
        wall_seconds=wall,
        throughput=throughput,
        report_path=report_path,
        verdict=final["verdict"],
        manifest_path=storage.as_local_or_uri(manifest_path),
        num_shards=len(shards),
    )


def _warn_insufficient(pp: PreprocessConfig, output_dir: str, when: str) -> None:
    message = (
        f"WARNING: not enough usable audio for a good voice (verdict 'insufficient'; need at least "
        f"{pp.min_usable_minutes} min per speaker); {when}. See {storage.join(output_dir, 'report.txt')}"
    )
    logger.warning(message)
    print(message)


def _empty_shard(segments_dir: str, rows_per_shard: int) -> list[ShardInfo]:
    """One empty shard with the schema (a dataset is never a folder without Parquet files)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rvc-shards-") as staging:
        shards = ShardWriter(Path(staging), rows_per_shard).close()
        for shard in shards:
            storage.upload_file(Path(staging) / shard.name, storage.join(segments_dir, shard.name))
    return shards
