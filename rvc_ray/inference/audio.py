"""Audio in and out of the conversion pipeline: decode, resample to 16 kHz mono, limit, high-pass.

Every decoding failure raises :class:`AudioDecodeError` (a ``ValueError``) with a message that names
the problem but never a server path, so the HTTP layer can hand it to the client as it is.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from rvc_ray.errors import InputError

__all__ = [
    "INPUT_SAMPLE_RATE",
    "AudioDecodeError",
    "AudioTooLongError",
    "DecodedAudio",
    "apply_highpass",
    "decode_audio",
    "limit_peak",
    "resample",
    "to_pcm16_wav_bytes",
]

INPUT_SAMPLE_RATE = 16000
"""Every analysis stream (F0, content features) runs at 16 kHz, 160-sample hop (100 frames/s)."""

SUPPORTED_FORMATS = "WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF"


class AudioDecodeError(InputError):
    """The input is empty, not audio, corrupt, silent-only NaNs, or too short to convert."""


class AudioTooLongError(InputError):
    """The input is longer than the configured maximum duration."""


@dataclass(frozen=True)
class DecodedAudio:
    """Mono float32 audio at 16 kHz plus what the source was.

    Attributes:
        wav_16k: ``[N]`` float32 samples at 16 kHz, mono (channels averaged).
        source_sample_rate: the rate of the decoded file.
        source_channels: channel count of the decoded file.
        duration_s: ``N / 16000``.
    """

    wav_16k: np.ndarray
    source_sample_rate: int
    source_channels: int

    @property
    def duration_s(self) -> float:
        return self.wav_16k.shape[0] / INPUT_SAMPLE_RATE


def resample(wav: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample ``[N]`` float audio with soxr (VHQ); a no-op when the rates match."""
    if from_rate == to_rate:
        return np.ascontiguousarray(wav, dtype=np.float32)
    import soxr

    return soxr.resample(np.ascontiguousarray(wav, dtype=np.float32), from_rate, to_rate, quality="VHQ").astype(
        np.float32, copy=False
    )


def decode_audio(
    source: bytes | Path,
    *,
    max_duration_s: float | None = None,
    min_duration_s: float = 0.1,
    name: str = "input",
) -> DecodedAudio:
    """Decode ``source`` (file bytes or a path) to 16 kHz mono float32.

    Args:
        source: the encoded file (any format libsndfile reads: WAV, FLAC, OGG, MP3, AIFF...) or its path.
        max_duration_s: reject longer inputs *before* decoding them (from the header) with
            :class:`AudioTooLongError`; ``None`` = no limit.
        min_duration_s: reject shorter inputs (the content encoder needs at least 25 ms; 0.1 s by default).
        name: how to call the input in error messages (never a server path).

    Raises:
        AudioDecodeError: empty, not audio, corrupt, non-finite or too short input.
        AudioTooLongError: longer than ``max_duration_s``.
    """
    import soundfile as sf

    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise AudioDecodeError(f"{name} is empty (0 bytes); send an audio file ({SUPPORTED_FORMATS})")

        def opener() -> sf.SoundFile:
            return sf.SoundFile(io.BytesIO(bytes(source)))
    else:
        path = Path(source)
        if not path.is_file():
            raise AudioDecodeError(f"{name} does not exist or is not a file")
        if path.stat().st_size == 0:
            raise AudioDecodeError(f"{name} is empty (0 bytes)")

        def opener() -> sf.SoundFile:
            return sf.SoundFile(str(path))

    try:
        with opener() as handle:
            rate, channels, frames = int(handle.samplerate), int(handle.channels), int(handle.frames)
            if rate <= 0 or channels <= 0:
                raise AudioDecodeError(f"{name} has an invalid header (sample rate {rate}, {channels} channels)")
            if max_duration_s is not None and frames > 0 and frames / rate > max_duration_s:
                raise AudioTooLongError(f"{name} is {frames / rate:.1f} s long; the limit is {max_duration_s:g} s")
            data = handle.read(dtype="float32", always_2d=True)
    except (AudioDecodeError, AudioTooLongError):
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError) as exc:
        reason = str(exc).split(":")[-1].strip() if isinstance(exc, sf.LibsndfileError) else type(exc).__name__
        raise AudioDecodeError(
            f"{name} could not be decoded as audio ({reason or 'unknown format'}); "
            f"supported formats: {SUPPORTED_FORMATS}"
        ) from None
    if data.shape[0] == 0:
        raise AudioDecodeError(f"{name} decodes to 0 samples (an empty or truncated audio file)")
    if max_duration_s is not None and data.shape[0] / rate > max_duration_s:
        raise AudioTooLongError(f"{name} is {data.shape[0] / rate:.1f} s long; the limit is {max_duration_s:g} s")
    if not np.isfinite(data).all():
        raise AudioDecodeError(f"{name} contains NaN or infinite samples")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    wav_16k = resample(mono, rate, INPUT_SAMPLE_RATE)
    if wav_16k.shape[0] < min_duration_s * INPUT_SAMPLE_RATE:
        raise AudioDecodeError(
            f"{name} is {data.shape[0] / rate * 1000:.0f} ms long; at least {min_duration_s * 1000:.0f} ms is needed"
        )
    return DecodedAudio(wav_16k=wav_16k, source_sample_rate=rate, source_channels=data.shape[1])


def limit_peak(wav: np.ndarray, peak: float) -> np.ndarray:
    """Scale ``wav`` down so that ``max|wav| <= peak`` (RVC: ``if max/peak > 1: wav /= max/peak``)."""
    top = float(np.abs(wav).max()) if wav.size else 0.0
    if top / peak > 1.0:
        return (wav / (top / peak)).astype(np.float32)
    return wav.astype(np.float32, copy=False)


@lru_cache(maxsize=4)
def _butter_highpass(order: int, cutoff_hz: float, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy import signal

    b, a = signal.butter(N=order, Wn=cutoff_hz, btype="high", fs=sample_rate)
    return b, a


def apply_highpass(wav: np.ndarray, *, cutoff_hz: float = 48.0, order: int = 5, sample_rate: int = 16000) -> np.ndarray:
    """Zero-phase Butterworth high-pass (``scipy.signal.filtfilt``), RVC's 48 Hz / order 5 at 16 kHz.

    Inputs shorter than filtfilt's default padding are padded by reflection (scipy's ``padlen``
    is reduced to fit) instead of failing.
    """
    from scipy import signal

    b, a = _butter_highpass(order, cutoff_hz, sample_rate)
    padlen = min(3 * max(len(a), len(b)), wav.shape[0] - 1)
    return signal.filtfilt(b, a, wav, padlen=padlen).astype(np.float32)


def to_pcm16_wav_bytes(wav: np.ndarray, sample_rate: int) -> bytes:
    """Encode ``[N]`` float audio in [-1, 1] as a 16-bit PCM WAV file."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(wav, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
