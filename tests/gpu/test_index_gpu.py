"""The retrieval index built by faiss-gpu (the ``gpu`` extra) is a valid RVC index, like the CPU build."""

from __future__ import annotations

import numpy as np
import pytest

from rvc_ray.features.index import build_ivf_index, select_index_device

pytestmark = pytest.mark.gpu


def test_faiss_gpu_builds_the_index() -> None:
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        pytest.fail("the installed faiss has no GPU support: install the 'gpu' extra (faiss-gpu-cu12)")
    assert select_index_device(faiss, True) == "gpu"
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((20_000, 64)).astype(np.float32)
    on_gpu = build_ivf_index(feats, use_gpu=True, kmeans_threshold=10_000, kmeans_centroids=2_000)
    on_cpu = build_ivf_index(feats, use_gpu=False, kmeans_threshold=10_000, kmeans_centroids=2_000)
    assert isinstance(on_gpu, faiss.IndexIVFFlat) and on_gpu.ntotal == on_cpu.ntotal == 2_000
    assert faiss.extract_index_ivf(on_gpu).nprobe == 1
    vectors = on_gpu.reconstruct_n(0, on_gpu.ntotal)
    _, ids = on_gpu.search(vectors[:50], 1)
    assert np.mean(ids[:, 0] == np.arange(50)) > 0.9  # stored vectors find themselves
