"""Feeding the training device: the next batch is built (and copied) while the current step runs.

:class:`BatchPrefetcher` builds batches in one background thread, in the sampler's order (the STFT of
every clip and the padding are CPU work that torch runs with the GIL released), puts them in pinned
memory when the target is a GPU, and copies each to the device with ``non_blocking=True`` on a side CUDA
stream one batch ahead, so the host-to-device copy of batch N+1 overlaps the step on batch N.

:class:`DeviceItemCache` is ``train.cache_dataset_on_gpu`` (Applio's "cache dataset in VRAM"): every
clip's tensors (content, pitch, spectrogram, waveform) are built once and kept on the training device,
and batches are padded there; no per-step host work or copies remain. Only for datasets that fit
comfortably in GPU memory: :func:`cached_dataset_bytes` tells how much it takes.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from rvc_ray.data.batch import RVCBatch
    from rvc_ray.data.dataset import FeatureItem, TrainingItems

__all__ = ["BatchPrefetcher", "DeviceItemCache", "cache_items_on_device", "cached_dataset_bytes"]

log = logging.getLogger("rvc_ray.train")

_DONE = object()


class _Failure:
    """An exception raised in the loader thread, re-raised in the consumer at the same position."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class BatchPrefetcher:
    """Iterate ``load_batch(indices)`` for each entry of ``index_batches``, on ``device``, ahead of use.

    Args:
        index_batches: the item indices of each batch, in training order (e.g. a bucket sampler).
        load_batch: indices -> an :class:`RVCBatch` on the host (or already on ``device``).
        device: the training device.
        depth: batches built ahead in the background thread (>= 1).
        pin_memory: page-lock host batches before the copy; default: when ``device`` is CUDA.

    Order and contents are exactly those of ``[load_batch(i).to(device) for i in index_batches]``; an
    exception in ``load_batch`` is raised by the iteration at that batch. Leaving the loop early (break,
    an exception in the step) stops the thread at its next batch.
    """

    def __init__(
        self,
        index_batches: Iterable[Sequence[int]],
        load_batch: Callable[[Sequence[int]], RVCBatch],
        device: torch.device | str,
        *,
        depth: int = 2,
        pin_memory: bool | None = None,
    ) -> None:
        import torch

        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._index_batches = index_batches
        self._load_batch = load_batch
        self.device = torch.device(device)
        self.depth = depth
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else pin_memory

    def _produce(self, out: queue.Queue[Any], stop: threading.Event) -> None:
        try:
            for indices in self._index_batches:
                if stop.is_set():
                    return
                batch = self._load_batch(list(indices))
                if self.pin_memory and batch.content.device.type == "cpu":
                    batch = batch.pin_memory()
                _put_unless_stopped(out, stop, batch)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            _put_unless_stopped(out, stop, _Failure(exc))
            return
        _put_unless_stopped(out, stop, _DONE)

    def __iter__(self) -> Iterator[RVCBatch]:
        import torch

        out: queue.Queue[Any] = queue.Queue(maxsize=self.depth)
        stop = threading.Event()
        thread = threading.Thread(target=self._produce, args=(out, stop), name="rvc-batch-prefetch", daemon=True)
        thread.start()
        stream = torch.cuda.Stream(device=self.device) if self.device.type == "cuda" else None

        def next_on_device() -> RVCBatch | _Failure | None:
            item = out.get()
            if item is _DONE:
                return None
            if isinstance(item, _Failure):
                return item  # raised once the batches before it have been used
            if stream is None:
                return item.to(self.device)
            with torch.cuda.stream(stream):
                return item.to(self.device, non_blocking=True)

        try:
            upcoming = next_on_device()
            while upcoming is not None:
                if isinstance(upcoming, _Failure):
                    raise upcoming.error
                current = upcoming
                if stream is not None:
                    # the step's stream waits for the copy; the copy's memory belongs to the step's stream now
                    torch.cuda.current_stream(self.device).wait_stream(stream)
                    current.map(lambda t: _record_stream(t, torch.cuda.current_stream(self.device)))
                upcoming = next_on_device()  # batch N+1 is copied while the caller runs the step on batch N
                yield current
        finally:
            stop.set()
            thread.join(timeout=5.0)


def _put_unless_stopped(out: queue.Queue[Any], stop: threading.Event, item: object) -> None:
    """Put ``item`` once there is room, unless the consumer has gone (then the thread may end)."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _record_stream(tensor: torch.Tensor, stream: torch.cuda.Stream) -> torch.Tensor:
    tensor.record_stream(stream)
    return tensor


def cached_dataset_bytes(items: TrainingItems) -> int:
    """Bytes the cache of every item would take: content + spec + wav (float32) + pitch (int64 + float32)."""
    t = items.table
    n_freq = None
    total = 0
    for index, frames_raw in enumerate(t.num_frames):
        frames = min(int(frames_raw), items.max_frames)
        if n_freq is None:
            n_freq = int(items[index].spec.shape[0])
        per_frame = t.content_dim * 4 + n_freq * 4 + items.hop_length * 4 + (12 if items.use_f0 else 0)
        total += frames * per_frame
    return total


class DeviceItemCache:
    """Every item of ``items`` built once and kept on ``device``; :meth:`batch` pads on the device.

    Same items and batches as ``items`` (bit-identical values), so it can replace ``items`` in the loop.
    """

    def __init__(self, items: TrainingItems, device: torch.device | str) -> None:
        import torch

        self.device = torch.device(device)
        self._items: list[FeatureItem] = [self._to_device(items[i]) for i in range(len(items))]
        self.lengths = [item.length for item in self._items]

    def _to_device(self, item: FeatureItem) -> FeatureItem:
        from dataclasses import replace

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(self.device)

        return replace(
            item,
            content=item.content.to(self.device),
            pitch_bins=move(item.pitch_bins),
            f0_hz=move(item.f0_hz),
            spec=item.spec.to(self.device),
            wav=item.wav.to(self.device),
        )

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> FeatureItem:
        return self._items[index]

    def batch(self, indices: Sequence[int]) -> RVCBatch:
        """The padded batch of ``indices``, allocated on the cache's device."""
        from rvc_ray.data.dataset import collate_items

        return collate_items([self._items[i] for i in indices])


def cache_items_on_device(items: TrainingItems, device: torch.device, *, announce: bool) -> DeviceItemCache:
    """``train.cache_dataset_on_gpu``: every clip on the GPU, refused (one clear line) when the clips would
    take more than half of the GPU's free memory."""
    import torch

    from rvc_ray.data.dataset import FeatureTableError

    needed = cached_dataset_bytes(items)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        if needed > free // 2:
            raise FeatureTableError(
                f"train.cache_dataset_on_gpu: the clips take {needed / 2**30:.2f} GiB, more than half of the "
                f"{free / 2**30:.2f} GiB free on {device}; turn it off for this dataset"
            )
    if announce:
        log.warning("rvc-ray train: caching %d clips (%.1f MiB) on %s", len(items), needed / 2**20, device)
    return DeviceItemCache(items, device)
