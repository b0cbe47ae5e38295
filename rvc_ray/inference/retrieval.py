"""Feature retrieval from a voice's FAISS index (docs/rvc-reference.md §8 step 7.2), without RVC's NaN on exact matches.

RVC weights the ``k = 8`` neighbours by ``(1 / score)^2``, where ``score`` is the *squared* L2 distance,
so a query that is exactly in the index (score 0) gives ``inf / inf = NaN``. Here the distance is
clamped to :data:`MIN_SQUARED_DISTANCE` first: an exact match then gets a weight ~1e16 times larger
than any real neighbour, i.e. the retrieved vector is that match, which is the limit of RVC's formula.
Neighbours FAISS could not fill (id ``-1``, fewer than k vectors in the probed lists) get weight 0;
a frame with no neighbour at all keeps its own features.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = ["MIN_SQUARED_DISTANCE", "NUM_NEIGHBOURS", "FeatureIndex", "mix_retrieved_features", "retrieve_features"]

NUM_NEIGHBOURS = 8
MIN_SQUARED_DISTANCE = 1e-8
"""Squared distances are clamped to this before ``(1 / d)^2``: finite in float64 and float32 (1e16)."""


class FeatureIndex(Protocol):
    """What the pipeline needs from a retrieval index (``rvc_ray.features.index.RetrievalIndex``)."""

    @property
    def vectors(self) -> np.ndarray:
        """``[N, C]`` float32: every vector of the index, in id order."""
        ...

    def search(self, feats: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``feats [T, C]`` -> (squared distances ``[T, k]``, ids ``[T, k]``, -1 = none)."""
        ...


def retrieve_features(feats: np.ndarray, index: FeatureIndex, k: int = NUM_NEIGHBOURS) -> np.ndarray:
    """The inverse-distance-weighted mean of each frame's k nearest index vectors.

    Args:
        feats: ``[T, C]`` float32 content features.
        index: the voice's retrieval index (dimension C).

    Returns:
        ``[T, C]`` float32 retrieved features (a frame without any neighbour keeps ``feats``).
    """
    vectors = index.vectors
    if vectors.shape[1] != feats.shape[1]:
        raise ValueError(
            f"the voice's index holds {vectors.shape[1]}-d vectors but the content features are "
            f"{feats.shape[1]}-d (an index built for another model version?)"
        )
    k = min(k, vectors.shape[0])
    scores, ids = index.search(np.ascontiguousarray(feats, dtype=np.float32), k)
    valid = ids >= 0
    weights = np.where(valid, np.square(1.0 / np.maximum(scores.astype(np.float64), MIN_SQUARED_DISTANCE)), 0.0)
    totals = weights.sum(axis=1, keepdims=True)
    has_neighbour = totals[:, 0] > 0
    weights = np.divide(weights, totals, out=np.zeros_like(weights), where=totals > 0)
    gathered = vectors[np.where(valid, ids, 0)]  # [T, k, C]
    retrieved = np.einsum("tk,tkc->tc", weights, gathered.astype(np.float64)).astype(np.float32)
    retrieved[~has_neighbour] = feats[~has_neighbour]
    return retrieved


def mix_retrieved_features(
    feats: np.ndarray, index: FeatureIndex | None, index_rate: float, k: int = NUM_NEIGHBOURS
) -> np.ndarray:
    """``index_rate * retrieved + (1 - index_rate) * feats`` (``feats`` unchanged without an index or at 0)."""
    if index is None or index_rate <= 0.0:
        return feats
    retrieved = retrieve_features(feats, index, k)
    return (index_rate * retrieved + (1.0 - index_rate) * feats).astype(np.float32)
