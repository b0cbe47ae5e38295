"""Long-input chunking at quiet points, as RVC's ``Pipeline.pipeline`` does it (docs/rvc-reference.md §8 steps 4-5, 7).

The whole input is reflect-padded by ``t_pad = x_pad * 16000`` samples on each side. When it is longer
than ``x_max`` seconds, it is cut near every multiple of ``x_center`` seconds, at the quietest
10 ms window within ``+-x_query`` seconds. Each chunk is converted with ``t_pad`` samples of real
context on both sides, which are trimmed after synthesis, so chunks join without seams.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["HOP_16K", "ChunkingSettings", "ChunkSpan", "find_chunk_cuts", "plan_chunks"]

HOP_16K = 160
"""Samples per analysis frame at 16 kHz (10 ms)."""


@dataclass(frozen=True)
class ChunkingSettings:
    """RVC's ``x_pad / x_query / x_center / x_max`` in seconds; the defaults are the fp32 row (and Applio).

    ``x_pad`` must be a multiple of 10 ms so that every padding is a whole number of frames.
    """

    x_pad: float = 1.0
    x_query: float = 6.0
    x_center: float = 38.0
    x_max: float = 41.0

    def __post_init__(self) -> None:
        if not (0 < self.x_query < self.x_center < self.x_max):
            raise ValueError(
                f"chunking needs 0 < x_query < x_center < x_max, got {self.x_query}, {self.x_center}, {self.x_max}"
            )
        if self.x_pad <= 0 or round(self.x_pad * 100) != self.x_pad * 100:
            raise ValueError(f"chunking x_pad must be a positive multiple of 0.01 s, got {self.x_pad}")

    @property
    def t_pad(self) -> int:
        """Reflect padding at 16 kHz in samples (a whole number of 160-sample frames)."""
        return int(round(self.x_pad * 100)) * HOP_16K

    def t_pad_target(self, sample_rate: int) -> int:
        """The same padding at the voice's rate, trimmed from both ends of every chunk's output."""
        return int(round(self.x_pad * 100)) * (sample_rate // 100)


@dataclass(frozen=True)
class ChunkSpan:
    """One chunk of the padded input.

    Attributes:
        start: first sample in the padded audio (a multiple of 160).
        stop: one past the last sample in the padded audio (or the end).
        frame_start: ``start // 160``.
        frame_stop: the frame range of the chunk's F0 (``(cut + 2 t_pad) // 160``, or the end).
    """

    start: int
    stop: int
    frame_start: int
    frame_stop: int


def find_chunk_cuts(wav_16k: np.ndarray, settings: ChunkingSettings) -> list[int]:
    """Cut points (sample offsets in the *unpadded* 16 kHz input) at quiet places, RVC's rule.

    Nothing is cut unless ``len + 160 > x_max * 16000``. Otherwise, for every ``t = k * x_center * 16000``
    inside the input, the cut is the first minimum of the 160-sample moving sum of ``|wav|`` within
    ``[t - x_query, t + x_query)`` seconds.

    Args:
        wav_16k: ``[N]`` float audio at 16 kHz.

    Returns:
        Increasing sample offsets (possibly empty).
    """
    t_query = int(settings.x_query * 16000)
    t_center = int(settings.x_center * 16000)
    t_max = int(settings.x_max * 16000)
    padded = np.pad(wav_16k, (HOP_16K // 2, HOP_16K // 2), mode="reflect")
    if padded.shape[0] <= t_max:
        return []
    # audio_sum[j] = sum_{i < 160} |padded[j + i]|, for j in [0, N): RVC's loop, as one cumulative sum.
    cumulative = np.concatenate([[0.0], np.cumsum(np.abs(padded.astype(np.float64)))])
    moving_sum = cumulative[HOP_16K : HOP_16K + wav_16k.shape[0]] - cumulative[: wav_16k.shape[0]]
    cuts = []
    for t in range(t_center, wav_16k.shape[0], t_center):
        window = moving_sum[t - t_query : t + t_query]
        cuts.append(t - t_query + int(np.argmin(window)))
    return cuts


def plan_chunks(num_samples: int, cuts: list[int], settings: ChunkingSettings) -> list[ChunkSpan]:
    """Spans of the padded audio (length ``num_samples + 2 t_pad``) that are converted one by one.

    Each cut ``t`` is floored to a frame boundary; chunk ``i`` runs from the previous cut to
    ``t + 2 t_pad + 160`` (RVC's ``audio_pad[s : t + t_pad2 + window]``), the last one to the end.
    """
    t_pad2 = 2 * settings.t_pad
    padded_len = num_samples + t_pad2
    spans = []
    start = 0
    for cut in cuts:
        cut = cut // HOP_16K * HOP_16K
        spans.append(
            ChunkSpan(start, min(cut + t_pad2 + HOP_16K, padded_len), start // HOP_16K, (cut + t_pad2) // HOP_16K)
        )
        start = cut
    spans.append(ChunkSpan(start, padded_len, start // HOP_16K, padded_len // HOP_16K))
    return spans
