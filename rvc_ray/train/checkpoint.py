"""Full training state <-> a checkpoint directory (the payload of a ``ray.train.Checkpoint``).

A checkpoint directory holds:

``state.pt``        G, D (unwrapped from DDP), both optimisers and schedulers, the GradScaler,
                    epoch / global step, RNG states, best validation score, batch sizes
``config.yaml``     the resolved :class:`~rvc_ray.config.RunConfig` of the run
``meta.json``       epoch, step, global and per-worker batch, number of workers, the epoch's metrics
``G_<step>.pth``    RVC/Applio-compatible generator checkpoint (take it to Applio or RVC-WebUI)
``D_<step>.pth``    RVC/Applio-compatible discriminator checkpoint
``voice.pth``       the exported inference voice of this epoch (small RVC format)

Only rank 0 writes, into a fresh temporary directory that is handed to ``ray.train.report`` once
complete, so storage never sees a half-written checkpoint. Every file is itself written to a
temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rvc_ray.config import RunConfig

if TYPE_CHECKING:
    from rvc_ray.train.gan_state import GANState

__all__ = [
    "META_FILE",
    "STATE_FILE",
    "TrainState",
    "capture_rng_state",
    "checkpoint_directory",
    "RestoredState",
    "find_latest_rvc_checkpoints",
    "load_pretrained_pair",
    "load_train_state",
    "read_checkpoint_meta",
    "restore_initial_state",
    "restore_rng_state",
    "local_feature_table",
    "newest_stored_checkpoint",
    "save_train_state",
]

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
META_FILE = "meta.json"
VOICE_FILE = "voice.pth"


@dataclass
class TrainState:
    """Everything needed to continue training exactly where it stopped.

    ``epoch`` is the last COMPLETED epoch (1-based); a resumed run starts at ``epoch + 1``.
    """

    epoch: int
    global_step: int
    generator: dict[str, Any]
    discriminator: dict[str, Any]
    optimizer_g: dict[str, Any]
    optimizer_d: dict[str, Any]
    scheduler_g: dict[str, Any]
    scheduler_d: dict[str, Any]
    scaler: dict[str, Any] | None
    global_batch_size: int
    per_worker_batch_size: int
    num_workers: int
    rng: dict[str, Any] = field(default_factory=dict)
    best_val_mel_l1: float | None = None
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) RNG states of this process."""
    import torch

    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (missing entries are left alone)."""
    import torch

    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_train_state(state: TrainState, directory: Path, cfg: RunConfig) -> Path:
    """Write ``state.pt``, ``config.yaml`` and ``meta.json`` into ``directory``; return the state file."""
    import io

    import torch
    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(asdict(state), buffer)
    _atomic_write_bytes(directory / STATE_FILE, buffer.getvalue())
    config_text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    _atomic_write_bytes(directory / CONFIG_FILE, config_text.encode("utf-8"))
    meta = {
        "epoch": state.epoch,
        "global_step": state.global_step,
        "global_batch_size": state.global_batch_size,
        "per_worker_batch_size": state.per_worker_batch_size,
        "num_workers": state.num_workers,
        "best_val_mel_l1": state.best_val_mel_l1,
        "best_epoch": state.best_epoch,
        "metrics": state.metrics,
    }
    _atomic_write_bytes(directory / META_FILE, json.dumps(meta, indent=2).encode("utf-8"))
    return directory / STATE_FILE


def load_train_state(directory: Path) -> TrainState:
    """Read the :class:`TrainState` of a checkpoint directory written by :func:`save_train_state`.

    Raises:
        FileNotFoundError: the directory has no ``state.pt``.
    """
    import torch

    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not an rvc-ray checkpoint: {STATE_FILE} is missing")
    with torch.serialization.safe_globals(_numpy_array_globals()):  # the RNG states hold numpy arrays
        raw = torch.load(path, map_location="cpu", weights_only=True)
    return TrainState(**raw)


def _numpy_array_globals() -> list[Any]:
    """What a pickled numpy array or scalar needs, for ``torch.load(weights_only=True)``."""
    core = getattr(np, "_core", None) or np.core
    dtype_classes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype, *dtype_classes]


def read_checkpoint_meta(directory: Path) -> dict[str, Any]:
    """The ``meta.json`` of a checkpoint directory (epoch, step, batch sizes, metrics)."""
    return dict(json.loads((Path(directory) / META_FILE).read_text(encoding="utf-8")))


_STEP_IN_NAME = re.compile(r"^([GD])_(\d+)\.pth$")


def find_latest_rvc_checkpoints(directory: Path) -> tuple[Path, Path]:
    """The newest ``G_<n>.pth`` and ``D_<n>.pth`` pair of an RVC/Applio experiment directory.

    RVC sorts by every digit in the path; here the step number ``n`` of the file name decides, and
    G and D must share it.

    Raises:
        FileNotFoundError: no matching G/D pair (the files found are listed).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"train.resume_from_rvc_dir={directory} is not a directory")
    found: dict[str, dict[int, Path]] = {"G": {}, "D": {}}
    for path in directory.iterdir():
        match = _STEP_IN_NAME.match(path.name)
        if match:
            found[match.group(1)][int(match.group(2))] = path
    common = sorted(set(found["G"]) & set(found["D"]))
    if not common:
        names = sorted(p.name for p in directory.iterdir() if p.suffix == ".pth")
        raise FileNotFoundError(
            f"train.resume_from_rvc_dir={directory} has no matching G_<n>.pth / D_<n>.pth pair (found: {names or 'none'})"
        )
    step = common[-1]
    return found["G"][step], found["D"][step]


@dataclass(frozen=True)
class RestoredState:
    """Where a worker starts: ``epoch`` = last completed epoch (0 for a fresh run)."""

    epoch: int = 0
    global_step: int = 0
    source: str | None = None
    best_val_mel_l1: float | None = None
    best_epoch: int | None = None
    epochs_without_improvement: int = 0


def load_pretrained_pair(cfg: RunConfig, gen: Any, disc: Any) -> None:
    """Load ``train.pretrained_generator`` / ``train.pretrained_discriminator`` (strict, as RVC)."""
    from rvc_ray.model.weights import load_pretrained

    if cfg.train.pretrained_generator is None or cfg.train.pretrained_discriminator is None:
        return
    load_pretrained(
        gen,
        disc,
        cfg.train.pretrained_generator,
        cfg.train.pretrained_discriminator,
        cfg.model,
        cfg.audio,
        strict=True,
    )


def _set_scheduler_epoch(scheduler: Any, optimizer: Any, base_lr: float, epoch: int) -> None:
    """Put an ExponentialLR at the learning rate of ``epoch`` completed epochs (RVC resume)."""
    gamma = float(getattr(scheduler, "gamma", 1.0))
    for group in optimizer.param_groups:
        group["lr"] = base_lr * gamma**epoch
        group.setdefault("initial_lr", base_lr)
    scheduler.last_epoch = epoch
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


@contextlib.contextmanager
def checkpoint_directory(ray_checkpoint: Any) -> Iterator[Path]:
    """A Ray Train checkpoint as a local directory that no other process writes while this one reads it.

    ``Checkpoint.as_directory()`` downloads a remote checkpoint into a temporary directory named after the
    checkpoint and shared by every process of the machine, under a lock that is released after the
    download: a second worker of the same machine (two GPUs of one node, or the one-machine test cluster)
    that takes the lock afterwards downloads again into the same files while the first is reading them
    ("PytorchStreamReader failed reading file"). Each process therefore downloads into its own directory; a
    local checkpoint is read in place.
    """
    import tempfile

    import pyarrow.fs

    if isinstance(ray_checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        yield Path(ray_checkpoint.path)
        return
    with tempfile.TemporaryDirectory(prefix=f"rvc-restore-{os.getpid()}-") as scratch:
        yield Path(ray_checkpoint.to_directory(scratch))


_EPOCH_DIR = re.compile(r"^epoch_(\d{5})/" + re.escape(META_FILE) + "$")


def newest_stored_checkpoint(run_dir: str) -> Any | None:
    """The newest ``epoch_NNNNN`` checkpoint directly under ``run_dir`` (the run's Ray Train storage) that
    holds ``meta.json`` and ``state.pt``, as a Ray Train ``Checkpoint``; None when there is none.

    For a worker group that Ray restarted without a checkpoint: Ray registers a reported checkpoint only
    once every worker has reported it, so a node lost right after rank 0 uploaded one leaves it in storage
    but unregistered, and the restart would begin again at epoch 1 (docs/cluster.md, "A node lost").
    """
    import ray.train

    from rvc_ray import storage

    epochs: dict[int, str] = {}
    for found in storage.list_files(run_dir, suffix=META_FILE, recursive=True):
        match = _EPOCH_DIR.match(storage.relative_path(found, run_dir).replace(os.sep, "/"))
        if match and storage.exists(storage.join(run_dir, f"epoch_{match.group(1)}", STATE_FILE)):
            epochs[int(match.group(1))] = storage.join(run_dir, f"epoch_{match.group(1)}")
    if not epochs:
        return None
    filesystem, path = storage.filesystem_and_path(epochs[max(epochs)])
    return ray.train.Checkpoint(path=path, filesystem=filesystem)


def restore_initial_state(cfg: RunConfig, gan: GANState, ray_checkpoint: Any) -> RestoredState:
    """Fill the un-wrapped G/D, optimisers, schedulers and scaler of ``gan`` from, in order of precedence:
    the Ray Train checkpoint (a restarted worker group or a re-run with the same name), the newest
    ``G_*/D_*.pth`` in ``train.resume_from_rvc_dir``, or the pretrained G/D (fine-tuning)."""
    g, d = gan.generator, gan.adversary
    gen, disc, opt_g, opt_d, sched_g, sched_d = g.model, d.model, g.optimizer, d.optimizer, g.scheduler, d.scheduler
    if ray_checkpoint is not None:
        with checkpoint_directory(ray_checkpoint) as directory:
            state = load_train_state(directory)
        gen.load_state_dict(state.generator)
        disc.load_state_dict(state.discriminator)
        opt_g.load_state_dict(state.optimizer_g)
        opt_d.load_state_dict(state.optimizer_d)
        sched_g.load_state_dict(state.scheduler_g)
        sched_d.load_state_dict(state.scheduler_d)
        if gan.scaler is not None and state.scaler is not None:
            gan.scaler.load_state_dict(state.scaler)
        return RestoredState(
            epoch=state.epoch,
            global_step=state.global_step,
            source="checkpoint",
            best_val_mel_l1=state.best_val_mel_l1,
            best_epoch=state.best_epoch,
            epochs_without_improvement=state.epochs_without_improvement,
        )
    if cfg.train.resume_from_rvc_dir is not None:
        from rvc_ray.model.weights import load_rvc_checkpoint

        g_path, d_path = find_latest_rvc_checkpoints(cfg.train.resume_from_rvc_dir)
        # non-strict like RVC: a key missing from the file keeps its initialisation (shapes are still checked)
        load_rvc_checkpoint(d_path, disc, opt_d, strict=False)
        epoch = int(load_rvc_checkpoint(g_path, gen, opt_g, strict=False))
        step = int(_STEP_IN_NAME.match(g_path.name).group(2))  # type: ignore[union-attr]
        _set_scheduler_epoch(sched_g, opt_g, cfg.optim.lr_generator, epoch)
        _set_scheduler_epoch(sched_d, opt_d, cfg.optim.lr_discriminator, epoch)
        return RestoredState(epoch=epoch, global_step=step, source=f"rvc:{g_path.name}")
    if cfg.train.pretrained_generator is not None:
        load_pretrained_pair(cfg, gen, disc)
        return RestoredState(source="pretrained")
    return RestoredState()


def local_feature_table(features_location: str) -> Path:
    """The feature table (``features/table/*.parquet``) as a local folder: the folder itself when local, else a
    copy of the table in this node's temporary directory (shared by the workers of a node, refreshed on use)."""
    import tempfile

    from rvc_ray import storage

    return storage.cached_local_copy(
        features_location, Path(tempfile.gettempdir()) / "rvc-ray-feature-tables", suffix=".parquet"
    )
