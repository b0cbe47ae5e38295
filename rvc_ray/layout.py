"""Where each stage of a run writes its output, under ``experiment.work_dir / experiment.name``.

The root is a *location* (``rvc_ray.storage``): an absolute local path or a URI such as
``s3://bucket/runs/demo``. The ``*_location`` properties are locations (strings) and work for both; the
older ``*_dir``/``*_path`` properties are :class:`~pathlib.Path` objects for code that only handles local
runs, and raise :class:`~rvc_ray.storage.StorageError` when the root is a URI (a ``Path`` would turn
``s3://b`` into the local folder ``s3:/b``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rvc_ray.config import RunConfig
from rvc_ray.storage import StorageError, is_remote, join, normalize_location

__all__ = ["RunLayout"]


@dataclass(frozen=True)
class RunLayout:
    """The directory layout of one run (one voice).

    ``root/``
        ``corpus/``     the generated demo recordings (demo runs only)
        ``dataset/``    preprocess output: ``segments/*.parquet``, ``manifest.json``, ``report.json``, ``report.txt``
        ``features/``   extract output: ``table/*.parquet``, ``manifest.json``
        ``index/``      ``<name>.index`` (RVC-compatible FAISS IVF-Flat)
        ``train/``      Ray Train storage (checkpoints), ``tensorboard/``, ``metrics.jsonl``
        ``voices/``     exported RVC voices ``<name>_e<E>_s<S>.pth`` (+ ``<name>.index``)
    """

    root_location: str
    name: str

    @classmethod
    def from_config(cls, cfg: RunConfig) -> RunLayout:
        """The layout of ``cfg.experiment`` (a relative local work_dir made absolute here, if not already)."""
        return cls(root_location=normalize_location(cfg.experiment.root), name=cfg.experiment.name)

    @property
    def is_remote(self) -> bool:
        """True when the run lives on a remote filesystem (``s3://`` ...), not on this machine's disk."""
        return is_remote(self.root_location)

    def location(self, *parts: str) -> str:
        """``root/parts...`` as a location."""
        return join(self.root_location, *parts)

    # ------------------------------------------------------------------ locations (local paths or URIs)

    @property
    def corpus_location(self) -> str:
        return self.location("corpus")

    @property
    def dataset_location(self) -> str:
        return self.location("dataset")

    @property
    def features_location(self) -> str:
        return self.location("features")

    @property
    def index_location(self) -> str:
        return self.location("index", f"{self.name}.index")

    @property
    def train_location(self) -> str:
        return self.location("train")

    @property
    def tensorboard_location(self) -> str:
        return self.location("train", "tensorboard")

    @property
    def metrics_location(self) -> str:
        return self.location("train", "metrics.jsonl")

    @property
    def voices_location(self) -> str:
        return self.location("voices")

    @property
    def tune_location(self) -> str:
        return self.location("tune")

    # ------------------------------------------------------------------ local paths (local runs only)

    def _local(self, location: str) -> Path:
        if is_remote(location):
            raise StorageError(f"{location} is not a local path; this code path needs a local experiment.work_dir")
        return Path(location)

    @property
    def root(self) -> Path:
        return self._local(self.root_location)

    @property
    def corpus_dir(self) -> Path:
        return self._local(self.corpus_location)

    @property
    def dataset_dir(self) -> Path:
        return self._local(self.dataset_location)

    @property
    def features_dir(self) -> Path:
        return self._local(self.features_location)

    @property
    def index_path(self) -> Path:
        return self._local(self.index_location)

    @property
    def train_dir(self) -> Path:
        return self._local(self.train_location)

    @property
    def tensorboard_dir(self) -> Path:
        return self._local(self.tensorboard_location)

    @property
    def metrics_path(self) -> Path:
        return self._local(self.metrics_location)

    @property
    def voices_dir(self) -> Path:
        return self._local(self.voices_location)

    @property
    def tune_dir(self) -> Path:
        return self._local(self.tune_location)
