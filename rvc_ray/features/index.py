"""The retrieval index: FAISS ``IVF{n},Flat`` built the way RVC builds it (docs/rvc-reference.md §7).

* Input: the content features of the **train** rows of ``features/table`` (no mute rows, no validation
  rows), de-duplicated back to 50 frames/s (the table stores them frame-doubled to 100 Hz; RVC indexes
  the 50 Hz ``3_feature768`` arrays), shuffled with ``experiment.seed``.
* More than ``index.kmeans_threshold`` vectors: k-means (``faiss.Kmeans``) down to ``index.kmeans_centroids``.
* ``n = max(1, min(int(16 * sqrt(N)), N // 39))`` inverted lists, ``nprobe = 1`` saved with the index,
  vectors added in batches of ``index.add_batch_size``. The file is ``faiss.write_index`` output that
  RVC/Applio read with ``faiss.read_index``.
* :func:`run_index` runs the build as its own Ray task with ``num_cpus=index.num_cpus`` and
  ``memory=index.memory_gb``, BLAS/OpenMP threads capped to ``num_cpus``; ``index.use_gpu`` builds with
  faiss-gpu (the ``gpu`` extra) on the task's GPU, and falls back to the CPU build, with a warning and
  ``built_on="cpu"`` in the result, when the installed faiss has no GPU support.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rvc_ray.errors import InputError

if TYPE_CHECKING:
    import faiss

    from rvc_ray.config import RunConfig

__all__ = [
    "IndexResult",
    "RetrievalIndex",
    "build_ivf_index",
    "compute_ivf_list_count",
    "load_index",
    "load_train_features",
    "run_index",
    "select_index_device",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexResult:
    index_path: Path | str  # a Path when local, the URI on a bucket
    num_vectors: int  # vectors stored in the index (after k-means reduction, if any)
    num_input_frames: int  # train frames read from the feature table (50 Hz)
    n_ivf: int
    used_kmeans: bool
    build_seconds: float
    size_bytes: int
    built_on: str = "cpu"  # "gpu" when faiss-gpu built it (index.use_gpu with the 'gpu' extra)


def compute_ivf_list_count(num_vectors: int) -> int:
    """RVC's IVF list count: ``max(1, min(int(16 * sqrt(N)), N // 39))``."""
    return max(1, min(int(16 * math.sqrt(num_vectors)), num_vectors // 39))


def _gpu_available(faiss_module) -> bool:
    return hasattr(faiss_module, "StandardGpuResources") and faiss_module.get_num_gpus() > 0


def select_index_device(faiss_module, use_gpu: bool) -> str:
    """``"gpu"`` when ``index.use_gpu`` and the installed faiss is a GPU build that sees a GPU (the ``gpu``
    extra: faiss-gpu-cu12), else ``"cpu"``; a requested GPU build that cannot run falls back to the CPU
    build with a warning (the result records ``built_on``)."""
    if not use_gpu:
        return "cpu"
    if _gpu_available(faiss_module):
        return "gpu"
    log.warning(
        "index.use_gpu=true but the installed faiss (%s) has no GPU support or sees no GPU: building the index on "
        "CPU instead; install the 'gpu' extra (faiss-gpu-cu12) to build on the GPU",
        getattr(faiss_module, "__version__", "?"),
    )
    return "cpu"


def build_ivf_index(
    features: np.ndarray,
    *,
    kmeans_threshold: int = 200_000,
    kmeans_centroids: int = 10_000,
    add_batch_size: int = 8192,
    seed: int = 1234,
    use_gpu: bool = False,
    shuffle: bool = True,
    overwrite_input: bool = False,
) -> faiss.Index:
    """Build RVC's index from ``features [N, C]`` float32 (pure: no files, no Ray).

    The shuffle is ``features[default_rng(seed).permutation(N)]``, done in place (the same order without a
    second copy of the vectors): on ``features`` itself when ``overwrite_input`` and it is already a
    C-contiguous float32 array (its row order is then changed), else on a copy.

    With ``use_gpu`` and a GPU faiss (:func:`select_index_device`), k-means, IVF training and the adds run
    on GPU 0 and the index is copied back to the CPU (the file is the same format); otherwise on CPU.

    Raises:
        ValueError: empty or non-finite input, or not 2-D.
    """
    import faiss

    feats = np.asarray(features, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ValueError(f"build_ivf_index needs a non-empty [N, C] array, got shape {feats.shape}")
    if not all(np.isfinite(feats[i : i + 8192]).all() for i in range(0, len(feats), 8192)):  # no [N, C] mask
        raise ValueError("build_ivf_index: the features contain NaN or inf values")
    on_gpu = select_index_device(faiss, use_gpu) == "gpu"
    if shuffle:
        if feats is features and not (overwrite_input and feats.flags.c_contiguous):
            feats = feats.copy()
        np.random.default_rng(seed).shuffle(feats)  # in place; the same order as rng.permutation(N)
    dim = feats.shape[1]
    if len(feats) > kmeans_threshold:
        log.info("index: k-means %d vectors -> %d centroids", len(feats), kmeans_centroids)
        kmeans = faiss.Kmeans(dim, kmeans_centroids, niter=20, seed=seed, gpu=on_gpu, verbose=False)
        kmeans.train(np.ascontiguousarray(feats))
        feats = np.ascontiguousarray(kmeans.centroids, dtype=np.float32)
    n_ivf = compute_ivf_list_count(len(feats))
    index = faiss.index_factory(dim, f"IVF{n_ivf},Flat")
    feats = np.ascontiguousarray(feats)
    if on_gpu:
        resources = faiss.StandardGpuResources()
        gpu_index = faiss.index_cpu_to_gpu(resources, 0, index)
        gpu_index.train(feats)
        for start in range(0, len(feats), add_batch_size):
            gpu_index.add(feats[start : start + add_batch_size])
        index = faiss.index_gpu_to_cpu(gpu_index)
    else:
        index.train(feats)
        for start in range(0, len(feats), add_batch_size):
            index.add(feats[start : start + add_batch_size])
    faiss.extract_index_ivf(index).nprobe = 1
    return index


def _train_row_mask(parquet_file: Any) -> tuple[np.ndarray, np.ndarray, set[int]]:
    """``(keep [R] bool, frames [R] int, content dims of the kept rows)`` of one feature-table file: the
    train, non-mute rows (a null split or is_mute counts as not train), from its small columns only."""
    import pyarrow.compute as pc

    meta = parquet_file.read(columns=["split", "is_mute", "num_frames", "content_dim"], use_threads=False)
    keep = pc.and_(
        pc.fill_null(pc.equal(meta.column("split"), "train"), False),
        pc.fill_null(pc.invert(meta.column("is_mute")), False),
    )
    keep_np = keep.to_numpy(zero_copy_only=False).astype(bool)
    frames = meta.column("num_frames").to_numpy(zero_copy_only=False).astype(np.int64)
    dims = set(meta.column("content_dim").filter(keep).to_pylist())
    return keep_np, frames, dims


def _gather_every_other_frame(content: Any, keep: np.ndarray, frames: np.ndarray, dim: int, out: np.ndarray) -> int:
    """Write frames 0, 2, 4, ... of the kept rows of ``content`` (a list<float32> array of ``frames[r] * dim``
    values per row) into ``out [M, dim]``, in row order, with one gather; returns M.

    Raises:
        InputError: a kept row's length is not ``num_frames * content_dim``.
    """
    offsets = content.offsets.to_numpy().astype(np.int64)  # absolute positions in content.values
    lengths = np.diff(offsets)[keep]
    if not np.array_equal(lengths, frames[keep] * dim):
        raise InputError("feature table: a train row's content length is not num_frames * content_dim")
    base, end = int(offsets[0]), int(offsets[-1])
    vectors = content.values.to_numpy(zero_copy_only=False)[base:end].reshape(-1, dim)
    starts = (offsets[:-1][keep] - base) // dim
    counts = (frames[keep] + 1) // 2  # every other frame undoes the x2 frame doubling; odd lengths keep the last
    total = int(counts.sum())
    within = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    np.take(vectors, np.repeat(starts, counts) + 2 * within, axis=0, out=out[:total])
    return total


def load_train_features(features_dir: Path, batch_rows: int = 64) -> np.ndarray:
    """The 50 Hz content vectors ``[N, C]`` float32 of the train, non-mute rows of ``features_dir/table``.

    The row selection and the output size come from the small columns first; the content column is then
    read ``batch_rows`` rows at a time and every other frame gathered straight into one preallocated array,
    so the peak is the output plus one batch (the table holds the content frame-doubled, twice the output).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table_dir = Path(features_dir) / "table"
    files = sorted(table_dir.glob("part-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{table_dir}: no part-*.parquet feature files; run `rvc-ray extract` first")
    sources = [pq.ParquetFile(f, buffer_size=1 << 22, pre_buffer=False) for f in files]
    selections = [_train_row_mask(source) for source in sources]
    dims = set().union(*(found for _, _, found in selections))
    if not any(keep.any() for keep, _, _ in selections):
        raise InputError(f"{table_dir}: no train rows (all rows are mute or validation); cannot build an index")
    if len(dims) != 1:
        raise InputError(f"{table_dir}: rows disagree on content_dim {sorted(dims)}")
    dim = dims.pop()
    total = sum(int(((frames[keep] + 1) // 2).sum()) for keep, frames, _ in selections)
    features = np.empty((total, dim), dtype=np.float32)
    filled = 0
    for source, (keep, frames, _) in zip(sources, selections, strict=True):
        row = 0
        for batch in source.iter_batches(batch_size=batch_rows, columns=["content"], use_threads=False):
            rows = slice(row, row + batch.num_rows)
            row += batch.num_rows
            if keep[rows].any():
                filled += _gather_every_other_frame(batch.column(0), keep[rows], frames[rows], dim, features[filled:])
    pa.default_memory_pool().release_unused()
    return features


def _cap_threads(num_cpus: int) -> None:
    import faiss

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(num_cpus)
    faiss.omp_set_num_threads(num_cpus)


def _build_and_write(raw_cfg: dict, features_dir: str, index_path: str) -> dict:
    """Ray task body: load train features, build, write. Returns IndexResult fields (JSON-able)."""

    import tempfile

    from rvc_ray import storage
    from rvc_ray.config import RunConfig

    cfg = RunConfig.model_validate(raw_cfg)
    _cap_threads(cfg.index.num_cpus)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rvc-index-") as scratch:
        local_features = storage.cached_local_copy(features_dir, Path(scratch) / "features", suffix=".parquet")
        feats = load_train_features(local_features)
        return _build_and_store(cfg, feats, index_path, Path(scratch), start)


def _build_and_store(cfg: Any, feats: np.ndarray, index_path: str, scratch: Path, start: float) -> dict:
    """Build the index of ``feats [N, C]`` and write it to the location ``index_path`` (via ``scratch`` if remote)."""
    import faiss

    from rvc_ray import storage

    built_on = select_index_device(faiss, cfg.index.use_gpu)
    index = build_ivf_index(
        feats,
        kmeans_threshold=cfg.index.kmeans_threshold,
        kmeans_centroids=cfg.index.kmeans_centroids,
        add_batch_size=cfg.index.add_batch_size,
        seed=cfg.experiment.seed,
        use_gpu=built_on == "gpu",
        overwrite_input=True,  # feats is this task's own array: shuffled in place, no second copy
    )
    path = scratch / Path(index_path).name if storage.is_remote(index_path) else Path(index_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    tmp.replace(path)
    size = path.stat().st_size
    if storage.is_remote(index_path):
        storage.upload_file(path, index_path)
    return {
        "index_path": index_path,
        "num_vectors": int(index.ntotal),
        "num_input_frames": int(len(feats)),
        "n_ivf": int(faiss.extract_index_ivf(index).nlist),
        "used_kmeans": bool(len(feats) > cfg.index.kmeans_threshold),
        "build_seconds": time.perf_counter() - start,
        "size_bytes": size,
        "built_on": built_on,
    }


def _cluster_in_use() -> bool:
    """Is this process connected to a Ray cluster, or told to join one (``RAY_ADDRESS``)?"""
    if os.environ.get("RAY_ADDRESS"):
        return True
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def run_index(
    cfg: RunConfig, features_dir: Path | str, index_path: Path | str, *, locations_checked: bool = False
) -> IndexResult:
    """Build ``index_path`` from ``features_dir`` in one Ray task (``index.num_cpus`` CPUs, ``index.memory_gb``).

    Both are locations (local paths or URIs, :mod:`rvc_ray.storage`): the task reads the feature table from
    there and writes the file itself (through a local temporary file on a bucket), so on a multi-node
    cluster a local ``index_path`` must be on shared storage. Without a cluster (no ``RAY_ADDRESS`` and Ray
    not started in this process, e.g. a stand-alone ``rvc-ray index``) the same function runs in this process
    with the same thread cap: starting a local Ray cluster for one task would cost 3-6 s and buy nothing
    (docs/benchmarks.md). Unless ``locations_checked``, every node of the cluster must first prove it can read
    ``features_dir`` and write the index's folder (:func:`rvc_ray.cluster.check_locations_on_cluster`).
    """
    from rvc_ray import storage
    from rvc_ray.cluster import check_locations_on_cluster

    args = (
        cfg.model_dump(mode="json"),
        storage.normalize_location(str(features_dir)),
        storage.normalize_location(str(index_path)),
    )
    if not locations_checked:
        check_locations_on_cluster(reads=[("features", args[1])], writes=[("index", args[2].rsplit("/", 1)[0])])
    if not _cluster_in_use() and not cfg.index.use_gpu:
        raw = _build_and_write(*args)
    else:
        import ray

        from rvc_ray.cluster import ensure_ray

        ensure_ray()
        task = ray.remote(_build_and_write).options(
            num_cpus=cfg.index.num_cpus,
            num_gpus=1 if cfg.index.use_gpu else 0,
            memory=int(cfg.index.memory_gb * 2**30),
            max_retries=0,
        )
        raw = ray.get(task.remote(*args))
    result = IndexResult(**{**raw, "index_path": storage.as_local_or_uri(raw["index_path"])})
    log.info(
        "index: %s  vectors=%d (from %d frames)  IVF%d,Flat  %.1f s  %.1f MiB",
        result.index_path,
        result.num_vectors,
        result.num_input_frames,
        result.n_ivf,
        result.build_seconds,
        result.size_bytes / 2**20,
    )
    return result


class RetrievalIndex:
    """A loaded index for inference: the faiss index plus its reconstructed vectors ``[N, C]``."""

    def __init__(self, index: faiss.Index, path: Path | None = None):
        self.index = index
        self.path = path
        self.vectors = index.reconstruct_n(0, index.ntotal).astype(np.float32, copy=False)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, features: np.ndarray, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """``features [T, C]`` -> ``(sq_dist [T, k], ids [T, k])``; squared L2 distances, ids -1 when fewer exist."""
        query = np.ascontiguousarray(features, dtype=np.float32)
        if query.ndim != 2 or query.shape[1] != self.dim:
            raise ValueError(f"index {self.path}: expected features [T, {self.dim}], got shape {query.shape}")
        return self.index.search(query, k)


def load_index(path: Path) -> RetrievalIndex:
    """Read an RVC/Applio/rvc-ray ``.index`` file (``faiss.read_index``)."""
    import faiss

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"index file {path} does not exist")
    try:
        index = faiss.read_index(str(path))
    except Exception as exc:  # noqa: BLE001 - faiss raises RuntimeError with C++ text
        raise InputError(f"{path}: not a readable FAISS index ({exc})") from exc
    return RetrievalIndex(index, path)
