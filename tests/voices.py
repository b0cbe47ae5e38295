"""Tiny random voices and indexes for tests and benchmarks (no training, no downloaded weights).

A voice is a generator with random initial weights, exported by :func:`rvc_ray.model.export.export_voice`
with the content-encoder record of ``cfg.features`` (the seeded random content encoder when
``features.content_encoder_path`` is unset), so the conversion pipeline can run it end to end. The
benchmarks import this module as ``benchmarks/bench_cluster.py`` imports ``tests/multinode.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rvc_ray.config import RunConfig

__all__ = ["export_random_voice", "write_random_index"]


def export_random_voice(
    cfg: RunConfig,
    path: Path,
    *,
    name: str | None = None,
    seed: int = 0,
    epoch: int = 1,
    step: int = 1,
    extra_info: dict[str, Any] | None = None,
) -> Path:
    """Export a randomly initialised generator of ``cfg`` (``torch.manual_seed(seed)``) to ``path``.

    ``extra_info`` entries are added to the export's info after the content-encoder record (and may replace
    it, e.g. ``{"content_encoder": {"kind": "hf"}}`` for a voice that needs HuBERT). Returns ``path``.
    """
    import torch

    from rvc_ray.features.content import describe_content_encoder
    from rvc_ray.model.build import build_generator
    from rvc_ray.model.export import export_voice

    torch.manual_seed(seed)
    generator = build_generator(cfg.model, cfg.audio)
    info = {"content_encoder": describe_content_encoder(cfg.features, cfg.model).to_json(), **(extra_info or {})}
    return export_voice(
        generator.state_dict(),
        cfg.model,
        cfg.audio,
        path,
        epoch=epoch,
        step=step,
        name=name or path.stem,
        extra_info=info,
    )


def write_random_index(path: Path, dim: int, num_vectors: int = 400) -> Path:
    """Write an ``IVF4,Flat`` FAISS index of ``num_vectors`` standard-normal ``dim``-d vectors (seed 0) to ``path``."""
    import faiss

    vectors = np.random.default_rng(0).standard_normal((num_vectors, dim)).astype(np.float32)
    index = faiss.index_factory(dim, "IVF4,Flat")
    index.train(vectors)
    index.add(vectors)
    faiss.extract_index_ivf(index).nprobe = 1
    faiss.write_index(index, str(path))
    return path
