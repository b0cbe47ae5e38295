"""The typed training batch shared by the data pipeline, the model and the training steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["RVCBatch"]


@dataclass(frozen=True)
class RVCBatch:
    """One padded batch of training clips, all streams aligned at 100 frames per second.

    Shapes (B = batch, F = frames, C = content dim, T = samples = F * hop):
        content:         [B, F, C] float32, content features upsampled x2 to 100 Hz
        content_lengths: [B] int64, valid frames per item
        pitch_bins:      [B, F] int64 in 1..255 (coarse F0), or None for a no-F0 model
        f0_hz:           [B, F] float32 continuous F0 in Hz (0 = unvoiced), or None
        spec:            [B, n_fft//2+1, F] float32 linear magnitude spectrogram
        spec_lengths:    [B] int64 (equal to content_lengths after alignment)
        wav:             [B, 1, T] float32 waveform at the model rate
        wav_lengths:     [B] int64 valid samples per item
        speaker_id:      [B] int64
    """

    content: Tensor
    content_lengths: Tensor
    pitch_bins: Tensor | None
    f0_hz: Tensor | None
    spec: Tensor
    spec_lengths: Tensor
    wav: Tensor
    wav_lengths: Tensor
    speaker_id: Tensor

    @property
    def size(self) -> int:
        """Number of items B."""
        return int(self.content.shape[0])

    def map(self, fn: Callable[[Tensor], Tensor]) -> RVCBatch:
        """Apply ``fn`` to every tensor (``None`` streams stay ``None``)."""

        def maybe(t: Tensor | None) -> Tensor | None:
            return None if t is None else fn(t)

        return RVCBatch(
            content=fn(self.content),
            content_lengths=fn(self.content_lengths),
            pitch_bins=maybe(self.pitch_bins),
            f0_hz=maybe(self.f0_hz),
            spec=fn(self.spec),
            spec_lengths=fn(self.spec_lengths),
            wav=fn(self.wav),
            wav_lengths=fn(self.wav_lengths),
            speaker_id=fn(self.speaker_id),
        )

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> RVCBatch:
        """Move every tensor to ``device`` (``non_blocking`` overlaps a copy from pinned memory with compute)."""
        return self.map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> RVCBatch:
        """Every tensor in page-locked host memory (needs CUDA), so a copy to the GPU can be asynchronous."""
        return self.map(lambda t: t.pin_memory())

    def select(self, index: Tensor | slice) -> RVCBatch:
        """Rows ``index`` of every tensor (used to split a global batch across workers in tests)."""
        return self.map(lambda t: t[index])
