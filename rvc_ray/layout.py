"""Where each stage of a run writes its output, under ``experiment.work_dir / experiment.name``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rvc_ray.config import RunConfig

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

    root: Path
    name: str

    @classmethod
    def from_config(cls, cfg: RunConfig) -> RunLayout:
        """The layout of ``cfg.experiment`` (paths made absolute)."""
        return cls(root=cfg.experiment.root.resolve(), name=cfg.experiment.name)

    @property
    def corpus_dir(self) -> Path:
        return self.root / "corpus"

    @property
    def dataset_dir(self) -> Path:
        return self.root / "dataset"

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    @property
    def index_path(self) -> Path:
        return self.root / "index" / f"{self.name}.index"

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def tensorboard_dir(self) -> Path:
        return self.train_dir / "tensorboard"

    @property
    def metrics_path(self) -> Path:
        return self.train_dir / "metrics.jsonl"

    @property
    def voices_dir(self) -> Path:
        return self.root / "voices"

    @property
    def tune_dir(self) -> Path:
        return self.root / "tune"
