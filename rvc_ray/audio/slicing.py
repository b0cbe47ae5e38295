"""RVC's silence slicer and the fixed-length segmentation of training clips (docs/rvc-reference.md §1.3, §1.4).

:func:`compute_slice_bounds` is the algorithm of RVC-WebUI ``train/dataset/slicer2.py`` / Applio
``rvc/train/preprocess/slicer.py`` (identical in both), re-implemented from the spec, returning sample
ranges instead of copies. Two deliberate differences, both documented in docs/dataset.md:

* RVC's "too short to slice" guard compares a *sample* count with a *frame* count and never triggers in
  practice; it is left out, which is the behaviour RVC actually has.
* :func:`compute_segment_bounds` numbers segments consecutively; RVC-WebUI skips one index before every
  final remainder (``0_0, 0_2``). The cut positions themselves are RVC's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SlicerParams", "compute_rms_frames", "compute_segment_bounds", "compute_slice_bounds"]


@dataclass(frozen=True)
class SlicerParams:
    """The slicer's settings converted to samples/frames for one sample rate (RVC's constructor arithmetic).

    ``hop`` and ``window`` are in samples; ``min_length``, ``min_interval`` and ``max_sil_kept`` in RMS frames.
    """

    threshold: float
    hop: int
    window: int
    min_length: int
    min_interval: int
    max_sil_kept: int

    @classmethod
    def from_ms(
        cls,
        sample_rate: int,
        threshold_db: float = -42.0,
        min_length_ms: int = 1500,
        min_interval_ms: int = 400,
        hop_ms: int = 15,
        max_sil_kept_ms: int = 500,
    ) -> SlicerParams:
        """RVC's derivation: hop = round(sr*hop_ms/1000), window = min(min_interval samples, 4*hop), etc."""
        if not min_length_ms >= min_interval_ms >= hop_ms:
            raise ValueError("the slicer needs min_length_ms >= min_interval_ms >= hop_ms")
        if max_sil_kept_ms < hop_ms:
            raise ValueError("the slicer needs max_sil_kept_ms >= hop_ms")
        min_interval_samples = sample_rate * min_interval_ms / 1000
        hop = round(sample_rate * hop_ms / 1000)
        return cls(
            threshold=10 ** (threshold_db / 20.0),
            hop=hop,
            window=min(round(min_interval_samples), 4 * hop),
            min_length=round(sample_rate * min_length_ms / 1000 / hop),
            min_interval=round(min_interval_samples / hop),
            max_sil_kept=round(sample_rate * max_sil_kept_ms / 1000 / hop),
        )


def compute_rms_frames(samples: np.ndarray, window: int, hop: int) -> np.ndarray:
    """Frame RMS like ``librosa.feature.rms(center=True, pad_mode="constant")``: [1 + (T + 2*(window//2) - window) // hop].

    The signal is zero-padded by ``window // 2`` on both sides, framed with ``window``/``hop`` and each
    frame gives ``sqrt(mean(x**2))``.
    """
    pad = window // 2
    padded = np.pad(samples.astype(np.float64, copy=False), (pad, pad))
    num_frames = 1 + (padded.shape[0] - window) // hop
    if num_frames <= 0:
        return np.zeros(0, dtype=np.float64)
    cumulative = np.concatenate(([0.0], np.cumsum(padded * padded)))
    starts = np.arange(num_frames) * hop
    energy = cumulative[starts + window] - cumulative[starts]
    return np.sqrt(np.maximum(energy, 0.0) / window)


def _silence_tags(rms: np.ndarray, p: SlicerParams) -> list[tuple[int, int]]:
    """The (start, end) frame ranges to cut out, in order (docs/rvc-reference.md §1.3 steps 1-4)."""
    tags: list[tuple[int, int]] = []
    silence_start: int | None = None
    clip_start = 0
    loud = rms >= p.threshold
    for i in range(rms.shape[0]):
        if not loud[i]:
            if silence_start is None:
                silence_start = i
            continue
        if silence_start is None:
            continue
        is_leading = silence_start == 0 and i > p.max_sil_kept
        need_middle_cut = i - silence_start >= p.min_interval and i - clip_start >= p.min_length
        if not is_leading and not need_middle_cut:
            silence_start = None
            continue
        length = i - silence_start
        if length <= p.max_sil_kept:
            pos = int(rms[silence_start : i + 1].argmin()) + silence_start
            tags.append((0, pos) if silence_start == 0 else (pos, pos))
            clip_start = pos
        else:
            pos_l = int(rms[silence_start : silence_start + p.max_sil_kept + 1].argmin()) + silence_start
            pos_r = int(rms[i - p.max_sil_kept : i + 1].argmin()) + i - p.max_sil_kept
            if length <= 2 * p.max_sil_kept:
                pos = int(rms[i - p.max_sil_kept : silence_start + p.max_sil_kept + 1].argmin()) + i - p.max_sil_kept
                if silence_start == 0:
                    tags.append((0, pos_r))
                    clip_start = pos_r
                else:
                    tags.append((min(pos_l, pos), max(pos_r, pos)))
                    clip_start = max(pos_r, pos)
            else:
                tags.append((0, pos_r) if silence_start == 0 else (pos_l, pos_r))
                clip_start = pos_r
        silence_start = None
    total = rms.shape[0]
    if silence_start is not None and total - silence_start >= p.min_interval:
        silence_end = min(total, silence_start + p.max_sil_kept)
        pos = int(rms[silence_start : silence_end + 1].argmin()) + silence_start
        tags.append((pos, total + 1))
    return tags


def compute_slice_bounds(samples: np.ndarray, params: SlicerParams) -> list[tuple[int, int]]:
    """Cut mono ``samples`` [T] at silences: the kept chunks as ``[(start, end), ...]`` sample ranges, in order.

    A signal without any cut is one chunk ``[(0, T)]``; an all-silent signal can give no chunk at all.
    """
    num_samples = samples.shape[0]
    if num_samples == 0:
        return []
    rms = compute_rms_frames(samples, params.window, params.hop)
    tags = _silence_tags(rms, params)
    if not tags:
        return [(0, num_samples)]
    total_frames = rms.shape[0]
    frame_ranges: list[tuple[int, int]] = []
    if tags[0][0] > 0:
        frame_ranges.append((0, tags[0][0]))
    for left, right in zip(tags[:-1], tags[1:], strict=True):
        frame_ranges.append((left[1], right[0]))
    if tags[-1][1] < total_frames:
        frame_ranges.append((tags[-1][1], total_frames))
    bounds = []
    for begin, end in frame_ranges:
        start, stop = begin * params.hop, min(num_samples, end * params.hop)
        if stop > start:
            bounds.append((start, stop))
    return bounds


def compute_segment_bounds(
    num_samples: int, sample_rate: int, segment_s: float = 3.7, overlap_s: float = 0.3
) -> list[tuple[int, int]]:
    """RVC's cutting of one slicer chunk of ``num_samples`` into training segments (docs/rvc-reference.md §1.4).

    Segment i starts at ``round(sr * (segment_s - overlap_s) * i)``. While more than ``segment_s + overlap_s``
    seconds remain after that start, a full ``segment_s`` segment is cut; otherwise the remainder (at most
    ``segment_s + overlap_s`` long, possibly very short) is the last segment. Callers drop remainders below
    their minimum length. Returns ``[(start, end), ...]`` relative to the chunk.
    """
    if overlap_s >= segment_s:
        raise ValueError(f"overlap_s ({overlap_s}) must be smaller than segment_s ({segment_s})")
    stride_s = segment_s - overlap_s
    tail = (segment_s + overlap_s) * sample_rate
    length = int(round(segment_s * sample_rate))
    bounds: list[tuple[int, int]] = []
    index = 0
    while True:
        start = int(round(sample_rate * stride_s * index))
        if start >= num_samples:
            return bounds
        if num_samples - start > tail:
            bounds.append((start, start + length))
            index += 1
            continue
        bounds.append((start, num_samples))
        return bounds
