"""Linear / mel spectrograms: RVC's framing and librosa-equal mel filterbank."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rvc_ray.audio.spectral import (
    MEL_CLAMP_MIN,
    MelSpectrogram,
    compute_linear_spectrogram,
    compute_mel_filterbank,
    compute_mel_spectrogram,
    spectrogram_to_mel,
)
from rvc_ray.config import load_run_config


@pytest.fixture(scope="module")
def audio40k():
    return load_run_config("rvc_v2_40k").audio


@pytest.fixture(scope="module")
def audio_tiny():
    return load_run_config("tiny_cpu").audio


@pytest.mark.parametrize("preset", ["rvc_v2_32k", "rvc_v2_40k", "rvc_v2_48k", "tiny_cpu"])
def test_mel_filterbank_equals_librosa_slaney(preset: str) -> None:
    import librosa

    audio = load_run_config(preset).audio
    ours = compute_mel_filterbank(audio.sample_rate, audio.n_fft, audio.n_mels, audio.mel_fmin, audio.mel_fmax)
    ref = librosa.filters.mel(sr=audio.sample_rate, n_fft=audio.n_fft, n_mels=audio.n_mels, fmin=0.0, fmax=None)
    assert ours.shape == (audio.n_mels, audio.n_fft // 2 + 1)
    np.testing.assert_array_equal(ours.numpy(), ref.astype(np.float32))


def test_linear_spectrogram_matches_numpy_reference(audio_tiny) -> None:
    a = audio_tiny
    rng = np.random.default_rng(0)
    wav = rng.standard_normal((2, 4000)).astype(np.float32) * 0.1
    spec = compute_linear_spectrogram(torch.from_numpy(wav), a.n_fft, a.hop_length, a.win_length)
    assert spec.shape == (2, a.n_fft // 2 + 1, 4000 // a.hop_length)
    pad = (a.n_fft - a.hop_length) // 2
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(a.win_length) / a.win_length)  # periodic Hann
    for b in range(2):
        padded = np.pad(wav[b].astype(np.float64), pad, mode="reflect")
        frames = [padded[i * a.hop_length : i * a.hop_length + a.n_fft] * window for i in range(spec.shape[-1])]
        ref = np.sqrt(np.abs(np.fft.rfft(np.stack(frames), axis=-1)) ** 2 + 1e-6).T
        np.testing.assert_allclose(spec[b].numpy(), ref, rtol=1e-4, atol=1e-4)


def test_linear_spectrogram_accepts_channel_axis(audio_tiny) -> None:
    a = audio_tiny
    wav = torch.randn(3, 1, 1600)
    spec = compute_linear_spectrogram(wav, a.n_fft, a.hop_length, a.win_length)
    assert spec.shape == (3, a.n_fft // 2 + 1, 10)


def test_mel_of_a_sine_peaks_at_its_frequency(audio40k) -> None:
    a = audio40k
    t = torch.arange(a.sample_rate) / a.sample_rate
    wav = 0.5 * torch.sin(2 * math.pi * 1000.0 * t)[None]
    mel = compute_mel_spectrogram(wav, a)
    assert mel.shape == (1, a.n_mels, a.sample_rate // a.hop_length)
    basis = compute_mel_filterbank(a.sample_rate, a.n_fft, a.n_mels)
    bin_1khz = round(1000.0 * a.n_fft / a.sample_rate)
    assert int(mel[0].mean(-1).argmax()) == int(basis[:, bin_1khz].argmax())


def test_mel_of_silence_is_finite_and_floored(audio_tiny) -> None:
    mel = compute_mel_spectrogram(torch.zeros(1, 3200), audio_tiny)
    assert torch.isfinite(mel).all()
    assert float(mel.min()) >= math.log(MEL_CLAMP_MIN) - 1e-6


def test_mel_module_equals_function_and_spec_path(audio_tiny) -> None:
    a = audio_tiny
    wav = torch.randn(2, 3200) * 0.1
    module = MelSpectrogram.from_audio_config(a)
    by_function = compute_mel_spectrogram(wav, a)
    torch.testing.assert_close(module(wav), by_function, rtol=0, atol=0)
    spec = compute_linear_spectrogram(wav, a.n_fft, a.hop_length, a.win_length)
    torch.testing.assert_close(spectrogram_to_mel(spec, a), by_function, rtol=0, atol=0)


def test_spectrogram_to_mel_rejects_wrong_bins(audio_tiny) -> None:
    with pytest.raises(ValueError, match="frequency bins"):
        spectrogram_to_mel(torch.ones(1, 100, 5), audio_tiny)


def test_too_short_waveform_is_refused_clearly(audio40k) -> None:
    with pytest.raises(ValueError, match="samples"):
        compute_mel_spectrogram(torch.zeros(1, 500), audio40k)
