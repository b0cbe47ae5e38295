"""Linear and mel spectrograms exactly as RVC computes them, in plain torch (no torchaudio).

RVC (docs/rvc-reference.md §6.1, §6.4): reflect-pad ``(n_fft - hop) / 2`` on both sides, ``torch.stft`` with a Hann window,
``center=False``, one-sided; magnitude ``sqrt(re^2 + im^2 + 1e-6)``; mel = librosa's slaney filterbank
(``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)``) times the magnitude; ``log(clamp(mel, 1e-5))``.
A clip of T samples gives ``T // hop`` frames.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    import numpy as np

    from rvc_ray.config import AudioConfig

__all__ = [
    "MAGNITUDE_EPS",
    "MEL_CLAMP_MIN",
    "MelSpectrogram",
    "compute_linear_spectrogram",
    "compute_mel_filterbank",
    "compute_mel_spectrogram",
    "spectrogram_to_mel",
]

MAGNITUDE_EPS = 1e-6
"""Added under the square root of the STFT magnitude (classic RVC and Applio)."""
MEL_CLAMP_MIN = 1e-5
"""Floor of the mel energies before the log (classic RVC and Applio)."""


def _as_batch(wav: Tensor) -> Tensor:
    if wav.dim() == 3 and wav.shape[1] == 1:
        return wav[:, 0]
    if wav.dim() == 1:
        return wav[None]
    if wav.dim() != 2:
        raise ValueError(f"expected a waveform [B, T] or [B, 1, T], got shape {tuple(wav.shape)}")
    return wav


def compute_linear_spectrogram(wav: Tensor, n_fft: int, hop_length: int, win_length: int) -> Tensor:
    """RVC's linear magnitude spectrogram.

    Args:
        wav: [B, T] (or [B, 1, T], or [T]) float waveform.

    Returns:
        [B, n_fft // 2 + 1, T // hop_length] magnitudes, in the dtype of ``wav`` (fp32 recommended).
    """
    wav = _as_batch(wav)
    pad = (n_fft - hop_length) // 2
    if wav.shape[-1] < hop_length or wav.shape[-1] <= pad:
        raise ValueError(
            f"waveform has {wav.shape[-1]} samples; the spectrogram (n_fft={n_fft}, hop={hop_length}) needs more "
            f"than {max(pad, hop_length - 1)}"
        )
    padded = torch.nn.functional.pad(wav[:, None], (pad, pad), mode="reflect")[:, 0]
    window = torch.hann_window(win_length, dtype=wav.dtype, device=wav.device)
    stft = torch.stft(
        padded,
        n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=window,
        center=False,
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    return torch.sqrt(stft.real.pow(2) + stft.imag.pow(2) + MAGNITUDE_EPS)


@functools.lru_cache(maxsize=16)
def _mel_filterbank_numpy(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)


def compute_mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> Tensor:
    """librosa's slaney-normalised mel filterbank, [n_mels, n_fft // 2 + 1] float32 (cached)."""
    return torch.from_numpy(_mel_filterbank_numpy(sample_rate, n_fft, n_mels, float(fmin), fmax)).float()


@functools.lru_cache(maxsize=32)
def _filterbank_on(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None, device: str, dtype: torch.dtype
) -> Tensor:
    return compute_mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax).to(device=device, dtype=dtype)


def spectrogram_to_mel(spec: Tensor, audio: AudioConfig) -> Tensor:
    """Log-mel of a linear magnitude spectrogram.

    Args:
        spec: [B, n_fft // 2 + 1, F] linear magnitudes.

    Returns:
        [B, n_mels, F] ``log(clamp(mel_basis @ spec, 1e-5))``.
    """
    if spec.shape[-2] != audio.spec_channels:
        raise ValueError(
            f"spectrogram has {spec.shape[-2]} frequency bins but audio.n_fft={audio.n_fft} needs {audio.spec_channels}"
        )
    basis = _filterbank_on(
        audio.sample_rate, audio.n_fft, audio.n_mels, audio.mel_fmin, audio.mel_fmax, str(spec.device), spec.dtype
    )
    return torch.log(torch.clamp(torch.matmul(basis, spec), min=MEL_CLAMP_MIN))


def compute_mel_spectrogram(wav: Tensor, audio: AudioConfig) -> Tensor:
    """RVC's ``mel_spectrogram_torch``: [B, T] (or [B, 1, T]) waveform -> [B, n_mels, T // hop] log-mel."""
    spec = compute_linear_spectrogram(wav, audio.n_fft, audio.hop_length, audio.win_length)
    return spectrogram_to_mel(spec, audio)


class MelSpectrogram(nn.Module):
    """Module form of :func:`compute_mel_spectrogram` with the filterbank and window as buffers."""

    def __init__(
        self,
        sample_rate: int,
        n_fft: int,
        hop_length: int,
        win_length: int,
        n_mels: int,
        fmin: float = 0.0,
        fmax: float | None = None,
    ) -> None:
        super().__init__()
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.register_buffer(
            "mel_basis", compute_mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax), persistent=False
        )

    @classmethod
    def from_audio_config(cls, audio: AudioConfig) -> MelSpectrogram:
        """Build from the run's :class:`AudioConfig`."""
        return cls(
            audio.sample_rate,
            audio.n_fft,
            audio.hop_length,
            audio.win_length,
            audio.n_mels,
            audio.mel_fmin,
            audio.mel_fmax,
        )

    def forward(self, wav: Tensor) -> Tensor:
        """[B, T] or [B, 1, T] -> [B, n_mels, T // hop] log-mel."""
        spec = compute_linear_spectrogram(wav, self.n_fft, self.hop_length, self.win_length)
        mel_basis = self.mel_basis
        assert isinstance(mel_basis, Tensor)
        basis = mel_basis.to(spec.dtype)
        return torch.log(torch.clamp(torch.matmul(basis, spec), min=MEL_CLAMP_MIN))
