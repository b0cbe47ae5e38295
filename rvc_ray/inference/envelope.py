"""``rms_mix_rate`` loudness-envelope mixing (docs/rvc-reference.md §8 step 9, RVC ``change_rms``)."""

from __future__ import annotations

import numpy as np

__all__ = ["RMS_FLOOR", "mix_rms_envelope"]

RMS_FLOOR = 1e-6


def _frame_rms(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """RMS over 0.5 s frames with a 0.5 s hop, centred (librosa ``feature.rms`` semantics)."""
    import librosa

    return librosa.feature.rms(y=wav, frame_length=sample_rate // 2 * 2, hop_length=sample_rate // 2)[0]


def _stretch(values: np.ndarray, length: int) -> np.ndarray:
    """Linear interpolation to ``length`` points, as ``F.interpolate(mode="linear")`` (align_corners=False)."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(values.astype(np.float32))[None, None]
    return F.interpolate(tensor, size=length, mode="linear").squeeze().numpy()


def mix_rms_envelope(
    source_16k: np.ndarray, output: np.ndarray, output_rate: int, rate: float, source_rate: int = 16000
) -> np.ndarray:
    """Give ``output`` the loudness envelope of ``source`` to the degree ``1 - rate``.

    ``output * rms_source^(1 - rate) * rms_output^(rate - 1)``: ``rate = 1`` returns ``output`` unchanged,
    ``rate = 0`` imposes the source's envelope.

    Args:
        source_16k: ``[N]`` the (high-passed) input at ``source_rate``.
        output: ``[M]`` the converted audio at ``output_rate``.
    """
    if rate >= 1.0 or output.size == 0:
        return output
    rms_source = _stretch(_frame_rms(source_16k, source_rate), output.shape[0])
    rms_output = np.maximum(_stretch(_frame_rms(output, output_rate), output.shape[0]), RMS_FLOOR)
    gain = np.power(rms_source, 1.0 - rate) * np.power(rms_output, rate - 1.0)
    return (output * gain).astype(np.float32)
