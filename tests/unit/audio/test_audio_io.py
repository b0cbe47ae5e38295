"""Decoding every supported format, rate, bit depth and channel count; truncation detection; soxr resampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rvc_ray.audio.io import (
    AudioDecodeError,
    detect_truncated_wav,
    downmix_to_mono,
    iter_audio_blocks,
    load_audio,
    probe_audio,
    resample,
    resampled_length,
)


def _tone(sample_rate: int, seconds: float = 1.0, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    return amplitude * np.sin(2 * np.pi * freq * t)


@pytest.mark.parametrize(
    ("suffix", "fmt", "subtype", "rate", "tolerance"),
    [
        (".wav", "WAV", "PCM_U8", 22050, 2e-2),
        (".wav", "WAV", "PCM_16", 44100, 1e-4),
        (".wav", "WAV", "PCM_24", 48000, 1e-6),
        (".wav", "WAV", "FLOAT", 32000, 1e-7),
        (".flac", "FLAC", "PCM_16", 16000, 1e-4),
        (".ogg", "OGG", "VORBIS", 44100, None),
        (".mp3", "MP3", "MPEG_LAYER_III", 44100, None),
    ],
)
def test_decodes_formats_and_bit_depths(
    tmp_path: Path, suffix: str, fmt: str, subtype: str, rate: int, tolerance: float | None
) -> None:
    path = tmp_path / f"clip{suffix}"
    x = _tone(rate)
    try:
        sf.write(path, x, rate, format=fmt, subtype=subtype)
    except (sf.LibsndfileError, ValueError, TypeError) as exc:  # pragma: no cover - depends on libsndfile build
        pytest.skip(f"this libsndfile cannot write {fmt}/{subtype}: {exc}")
    info = probe_audio(path)
    assert info.sample_rate == rate and info.channels == 1
    mono, got_rate = load_audio(path)
    assert got_rate == rate
    assert abs(mono.shape[0] - x.shape[0]) <= 2048  # lossy codecs may pad a frame
    if tolerance is not None:
        assert mono.shape == x.shape
        np.testing.assert_allclose(mono, x, atol=tolerance)
    else:
        assert np.sqrt(np.mean(mono**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


def test_stereo_is_downmixed_by_averaging(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    left, right = _tone(44100, amplitude=0.4), np.full(44100, 0.2)
    sf.write(path, np.stack([left, right], axis=1), 44100, subtype="FLOAT")
    info = probe_audio(path)
    assert (info.channels, info.sample_rate, info.num_frames) == (2, 44100, 44100)
    mono, _ = load_audio(path)
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-6)
    assert downmix_to_mono(np.ones((3, 1), dtype=np.float32)).shape == (3,)


def test_blocks_cover_the_file_in_order(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 10_000)
    sf.write(path, x, 8000, subtype="FLOAT")
    blocks = list(iter_audio_blocks(path, 3000))
    assert [b.shape[0] for b in blocks] == [3000, 3000, 3000, 1000]
    np.testing.assert_allclose(np.concatenate(blocks)[:, 0], x, atol=1e-7)
    with pytest.raises(ValueError, match="block_frames"):
        next(iter_audio_blocks(path, 0))


def test_bad_files_raise_specific_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioDecodeError, match="empty file"):
        probe_audio(empty)
    text = tmp_path / "notes.wav"
    text.write_text("these are my lyrics, not audio\n" * 10)
    with pytest.raises(AudioDecodeError, match="plain text"):
        probe_audio(text)
    garbage = tmp_path / "noise.flac"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(AudioDecodeError, match="not a readable audio file"):
        probe_audio(garbage)


def test_truncated_wav_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "cut.wav"
    sf.write(path, _tone(16000), 16000, subtype="PCM_16")
    assert detect_truncated_wav(path) is None
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    reason = detect_truncated_wav(path)
    assert reason is not None and reason.startswith("truncated") and "32000 bytes" in reason
    flac = tmp_path / "ok.flac"
    sf.write(flac, _tone(16000), 16000)
    assert detect_truncated_wav(flac) is None  # not a WAV: nothing to say


def test_resample_lengths_and_content() -> None:
    x = _tone(44100, seconds=3.7).astype(np.float32)
    y = resample(x, 44100, 40000)
    assert y.shape == (148000,) and y.dtype == np.float32
    z = resample(x, 44100, 16000)
    assert z.shape == (resampled_length(x.shape[0], 44100, 16000),) == (59200,)
    # a 440 Hz tone stays a 440 Hz tone
    spectrum = np.abs(np.fft.rfft(z[1600:-1600]))
    peak_hz = np.argmax(spectrum) * 16000 / (z.shape[0] - 3200)
    assert peak_hz == pytest.approx(440.0, abs=2.0)
    assert resample(x, 16000, 16000) is x
    assert resample(x[:0], 44100, 16000).shape == (0,)
    with pytest.raises(ValueError, match="mono"):
        resample(np.zeros((4, 2), dtype=np.float32), 44100, 16000)
