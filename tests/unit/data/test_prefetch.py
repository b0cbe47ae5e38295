"""The GPU data path on CPU: the prefetcher keeps order and values, and the device cache matches the table."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from rvc_ray.config import RunConfig
from rvc_ray.data.batch import RVCBatch
from rvc_ray.data.dataset import TrainingItems, load_feature_table, write_synthetic_feature_table
from rvc_ray.data.prefetch import BatchPrefetcher, DeviceItemCache, cache_items_on_device, cached_dataset_bytes

ORDER = [[3, 1], [0, 2], [4, 5], [1, 1], [5, 0]]


@pytest.fixture
def items(tmp_path: Path, tiny_cfg: RunConfig) -> TrainingItems:
    write_synthetic_feature_table(
        tmp_path,
        content_dim=tiny_cfg.model.content_dim,
        sample_rate=tiny_cfg.audio.sample_rate,
        frames=[20, 26, 31, 24, 28, 22],
    )
    table = load_feature_table(tmp_path, "train", hop_length=tiny_cfg.audio.hop_length)
    return TrainingItems(table, tiny_cfg.audio, max_frames=tiny_cfg.data.max_frames)


def _assert_batches_equal(a: RVCBatch, b: RVCBatch) -> None:
    for name in ("content", "content_lengths", "pitch_bins", "f0_hz", "spec", "spec_lengths", "wav", "speaker_id"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("depth", [1, 3])
def test_prefetcher_yields_the_same_batches_in_the_same_order(items: TrainingItems, depth: int) -> None:
    loaded: list[list[int]] = []

    def load(indices: Sequence[int]) -> RVCBatch:
        loaded.append(list(indices))
        return items.batch(indices)

    got = list(BatchPrefetcher(ORDER, load, "cpu", depth=depth))
    assert loaded == ORDER and len(got) == len(ORDER)
    for indices, batch in zip(ORDER, got, strict=True):
        _assert_batches_equal(batch, items.batch(indices))
        assert batch.content.device == torch.device("cpu")


def test_prefetcher_builds_ahead_of_the_consumer(items: TrainingItems) -> None:
    """While the first batch is being used, the next ones are already built (up to ``depth`` ahead)."""
    built = threading.Semaphore(0)

    def load(indices: Sequence[int]) -> RVCBatch:
        batch = items.batch(indices)
        built.release()
        return batch

    iterator = iter(BatchPrefetcher(ORDER, load, "cpu", depth=2))
    next(iterator)  # batch 0 yielded; batch 1 was fetched before it was handed over
    for _ in range(3):  # batches 0, 1 and one more, built by the thread without the consumer asking
        assert built.acquire(timeout=10)
    assert len(list(iterator)) == len(ORDER) - 1


def test_prefetcher_raises_a_loader_error_at_its_batch_and_stops_early(items: TrainingItems) -> None:
    def load(indices: Sequence[int]) -> RVCBatch:
        if indices == [4, 5]:
            raise ValueError("broken clip 4")
        return items.batch(indices)

    seen = []
    with pytest.raises(ValueError, match="broken clip 4"):
        for batch in BatchPrefetcher(ORDER, load, "cpu"):
            seen.append(batch.size)
    assert seen == [2, 2]

    before = {t.name for t in threading.enumerate()}
    for _ in BatchPrefetcher(ORDER, items.batch, "cpu"):
        break  # leaving early stops the loader thread
    assert "rvc-batch-prefetch" not in {t.name for t in threading.enumerate()} - before


def test_prefetcher_refuses_a_zero_depth(items: TrainingItems) -> None:
    with pytest.raises(ValueError, match="depth"):
        BatchPrefetcher(ORDER, items.batch, "cpu", depth=0)


def test_device_cache_gives_the_batches_of_the_table(items: TrainingItems) -> None:
    cache = cache_items_on_device(items, torch.device("cpu"), announce=False)
    assert isinstance(cache, DeviceItemCache) and len(cache) == len(items) and cache.lengths == items.lengths
    for indices in ORDER:
        _assert_batches_equal(cache.batch(indices), items.batch(indices))
    first = items[0]
    per_frame = first.content.shape[1] * 4 + first.spec.shape[0] * 4 + items.hop_length * 4 + 12
    assert cached_dataset_bytes(items) == sum(items.lengths) * per_frame
