"""Decoding audio files of any format, rate, bit depth and channel count, and high-quality resampling.

Everything here is numpy in, numpy out. Decoding goes through soundfile (libsndfile 1.1+ reads WAV, FLAC,
OGG/Vorbis/Opus and MP3); when libsndfile cannot open a file whose extension says it is compressed audio,
librosa/audioread is tried as a fallback (whole-file decode, so only for formats soundfile cannot stream).
Resampling uses soxr at 'VHQ' quality, the resampler Applio uses (``librosa.resample(res_type="soxr_vhq")``).
Preprocessing reads files with :func:`load_audio`; conversion (``rvc-ray convert`` and Serve) decodes an
upload or a file with :func:`decode_audio`, which checks the limits a server needs and never names a path.
Both downmix with :func:`downmix_to_mono`, resample with :func:`resample` and raise :class:`AudioDecodeError`.

Shapes: a multi-channel block is ``[T, C]`` (soundfile's layout), mono is ``[T]``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rvc_ray.errors import InputError

__all__ = [
    "ANALYSIS_SAMPLE_RATE",
    "AudioDecodeError",
    "AudioInfo",
    "AudioTooLongError",
    "DecodedAudio",
    "decode_audio",
    "detect_truncated_wav",
    "downmix_to_mono",
    "iter_audio_blocks",
    "load_audio",
    "probe_audio",
    "resample",
    "resampled_length",
    "to_pcm16_wav_bytes",
]

ANALYSIS_SAMPLE_RATE = 16000
"""Every analysis stream (F0, content features) runs at 16 kHz, 160-sample hop (100 frames/s)."""

SUPPORTED_FORMATS = "WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF"
_FALLBACK_EXTENSIONS = (".mp3", ".m4a", ".aac", ".ogg", ".opus")


class AudioDecodeError(InputError):
    """The input is empty, not audio, corrupt, holds NaNs, or is too short; the message says which and why."""


class AudioTooLongError(InputError):
    """The input is longer than the configured maximum duration."""


@dataclass(frozen=True)
class AudioInfo:
    """What a cheap header read says about a file.

    ``num_frames`` is the number of sample frames (one frame = one sample per channel). ``backend`` is
    ``"soundfile"`` when the file can be streamed block by block, ``"audioread"`` when it must be decoded whole.
    """

    path: Path
    sample_rate: int
    num_frames: int
    channels: int
    format: str
    subtype: str
    backend: str

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.sample_rate if self.sample_rate else 0.0


def downmix_to_mono(block: np.ndarray) -> np.ndarray:
    """Average the channels of ``block`` [T, C] (or pass [T] through) into a float64 mono signal [T]."""
    if block.ndim == 1:
        return block.astype(np.float64, copy=False)
    if block.ndim != 2:
        raise ValueError(f"expected audio of shape [T] or [T, C], got {block.shape}")
    if block.shape[1] == 1:
        return block[:, 0].astype(np.float64, copy=False)
    return block.mean(axis=1, dtype=np.float64)


def probe_audio(path: Path) -> AudioInfo:
    """Read the header of ``path`` (soundfile, or audioread for formats libsndfile cannot open).

    Raises:
        AudioDecodeError: the file is empty, not audio, or no backend can open it.
    """
    import soundfile as sf

    path = Path(path)
    if path.stat().st_size == 0:
        raise AudioDecodeError(f"{path}: empty file (0 bytes)")
    try:
        info = sf.info(str(path))
        return AudioInfo(
            path, int(info.samplerate), int(info.frames), int(info.channels), info.format, info.subtype, "soundfile"
        )
    except (sf.LibsndfileError, RuntimeError) as exc:
        soundfile_error = str(exc)
    if path.suffix.lower() in _FALLBACK_EXTENSIONS:
        try:
            samples, sample_rate = _decode_with_audioread(path)
        except Exception as exc:  # audioread raises several unrelated types
            raise AudioDecodeError(
                f"{path}: cannot decode ({soundfile_error}; audioread fallback: {type(exc).__name__}: {exc})"
            ) from None
        channels = 1 if samples.ndim == 1 else samples.shape[1]
        return AudioInfo(
            path, sample_rate, samples.shape[0], channels, path.suffix.lstrip(".").upper(), "", "audioread"
        )
    raise AudioDecodeError(f"{path}: {_describe_unreadable(path, soundfile_error)}")


def _describe_unreadable(path: Path, soundfile_error: str) -> str:
    head = path.read_bytes()[:512]
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return f"not an audio file: it holds plain text (libsndfile: {soundfile_error})"
    return f"not a readable audio file (libsndfile: {soundfile_error})"


def _decode_with_audioread(path: Path) -> tuple[np.ndarray, int]:
    """Decode the whole file with librosa/audioread at its native rate: ([T, C] or [T] float32, rate)."""
    import librosa

    samples, sample_rate = librosa.load(str(path), sr=None, mono=False)
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2:
        samples = samples.T  # librosa is [C, T]
    return samples, int(sample_rate)


def detect_truncated_wav(path: Path) -> str | None:
    """For a RIFF/RF64 WAV, compare the ``data`` chunk size its header declares with the bytes present.

    libsndfile silently reads what is there, so a cut-off recording would otherwise pass unnoticed.
    Returns a reason ("truncated: ...") or ``None`` for complete files, non-WAV files and streaming headers
    whose size field is unset (0 or 0xFFFFFFFF).
    """
    import struct

    path = Path(path)
    file_size = path.stat().st_size
    with open(path, "rb") as handle:
        header = handle.read(12)
        if len(header) < 12 or header[:4] not in (b"RIFF", b"RF64") or header[8:12] != b"WAVE":
            return None
        offset = 12
        while offset + 8 <= file_size:
            handle.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", handle.read(8))
            if chunk_id == b"data":
                if header[:4] == b"RF64" or chunk_size in (0, 0xFFFFFFFF):
                    return None
                present = file_size - (offset + 8)
                if present < chunk_size:
                    return (
                        f"truncated: the WAV header declares {chunk_size} bytes of audio but the file holds "
                        f"only {present} ({100.0 * present / chunk_size:.1f}%)"
                    )
                return None
            offset += 8 + chunk_size + (chunk_size & 1)
    return "truncated: the WAV file ends before its data chunk"


def iter_audio_blocks(path: Path, block_frames: int, info: AudioInfo | None = None) -> Iterator[np.ndarray]:
    """Yield consecutive blocks [<=block_frames, C] float32 of ``path`` (all channels), in order.

    With the soundfile backend only one block is in memory at a time (``sf.SoundFile.read(frames)``), so
    an hour-long file is read in bounded memory. The audioread fallback decodes the file whole first.
    """
    import soundfile as sf

    if block_frames <= 0:
        raise ValueError(f"block_frames must be positive, got {block_frames}")
    info = info or probe_audio(path)
    if info.backend == "audioread":
        samples, _ = _decode_with_audioread(Path(path))
        samples = samples[:, None] if samples.ndim == 1 else samples
        for start in range(0, samples.shape[0], block_frames):
            yield samples[start : start + block_frames]
        return
    with sf.SoundFile(str(path)) as handle:
        while True:
            block = handle.read(block_frames, dtype="float32", always_2d=True)
            if block.shape[0] == 0:
                return
            yield block
            if block.shape[0] < block_frames:
                return


def load_audio(path: Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decode ``path`` whole to mono float64 [T], resampled to ``sample_rate`` if given: (samples, rate)."""
    info = probe_audio(path)
    blocks = [downmix_to_mono(block) for block in iter_audio_blocks(path, 1 << 20, info)]
    mono = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float64)
    if sample_rate is not None and sample_rate != info.sample_rate:
        return resample(mono, info.sample_rate, sample_rate), sample_rate
    return mono, info.sample_rate


def resampled_length(num_samples: int, orig_rate: int, target_rate: int) -> int:
    """The number of samples soxr produces for ``num_samples`` at ``orig_rate`` resampled to ``target_rate``."""
    return int(round(num_samples * target_rate / orig_rate))


def resample(samples: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample mono ``samples`` [T] with soxr 'VHQ' to [round(T * target / orig)] (float32 in, float32 out).

    The output length is forced to exactly :func:`resampled_length` (soxr may differ by one sample).
    """
    import soxr

    if orig_rate <= 0 or target_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {target_rate}")
    if samples.ndim != 1:
        raise ValueError(f"resample expects mono [T], got shape {samples.shape}")
    want = resampled_length(samples.shape[0], orig_rate, target_rate)
    if orig_rate == target_rate:
        out = samples
    elif samples.shape[0] == 0:
        out = samples[:0]
    else:
        out = soxr.resample(samples, orig_rate, target_rate, quality="VHQ")
    if out.shape[0] > want:
        out = out[:want]
    elif out.shape[0] < want:
        out = np.pad(out, (0, want - out.shape[0]))
    return out


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
        return self.wav_16k.shape[0] / ANALYSIS_SAMPLE_RATE


def decode_audio(
    source: bytes | Path,
    *,
    max_duration_s: float | None = None,
    min_duration_s: float = 0.1,
    name: str = "input",
) -> DecodedAudio:
    """Decode ``source`` (file bytes or a path) to 16 kHz mono float32, for conversion.

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
    data, rate = _read_whole(source, max_duration_s, name)
    if data.shape[0] == 0:
        raise AudioDecodeError(f"{name} decodes to 0 samples (an empty or truncated audio file)")
    if max_duration_s is not None and data.shape[0] / rate > max_duration_s:
        raise AudioTooLongError(f"{name} is {data.shape[0] / rate:.1f} s long; the limit is {max_duration_s:g} s")
    if not np.isfinite(data).all():
        raise AudioDecodeError(f"{name} contains NaN or infinite samples")
    wav_16k = resample(downmix_to_mono(data), rate, ANALYSIS_SAMPLE_RATE).astype(np.float32)
    if wav_16k.shape[0] < min_duration_s * ANALYSIS_SAMPLE_RATE:
        raise AudioDecodeError(
            f"{name} is {data.shape[0] / rate * 1000:.0f} ms long; at least {min_duration_s * 1000:.0f} ms is needed"
        )
    return DecodedAudio(wav_16k=wav_16k, source_sample_rate=rate, source_channels=data.shape[1])


def _read_whole(source: bytes | Path, max_duration_s: float | None, name: str) -> tuple[np.ndarray, int]:
    """Decode all of ``source`` with soundfile: ``([T, C] float32, rate)``; header checks first."""
    import soundfile as sf

    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise AudioDecodeError(f"{name} is empty (0 bytes); send an audio file ({SUPPORTED_FORMATS})")
        payload: io.BytesIO | str = io.BytesIO(bytes(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise AudioDecodeError(f"{name} does not exist or is not a file")
        if path.stat().st_size == 0:
            raise AudioDecodeError(f"{name} is empty (0 bytes)")
        payload = str(path)
    try:
        with sf.SoundFile(payload) as handle:
            rate, channels, frames = int(handle.samplerate), int(handle.channels), int(handle.frames)
            if rate <= 0 or channels <= 0:
                raise AudioDecodeError(f"{name} has an invalid header (sample rate {rate}, {channels} channels)")
            if max_duration_s is not None and frames > 0 and frames / rate > max_duration_s:
                raise AudioTooLongError(f"{name} is {frames / rate:.1f} s long; the limit is {max_duration_s:g} s")
            return handle.read(dtype="float32", always_2d=True), rate
    except (AudioDecodeError, AudioTooLongError):
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError) as exc:
        reason = str(exc).split(":")[-1].strip() if isinstance(exc, sf.LibsndfileError) else type(exc).__name__
        raise AudioDecodeError(
            f"{name} could not be decoded as audio ({reason or 'unknown format'}); "
            f"supported formats: {SUPPORTED_FORMATS}"
        ) from None


def to_pcm16_wav_bytes(wav: np.ndarray, sample_rate: int) -> bytes:
    """Encode ``[N]`` float audio in [-1, 1] as a 16-bit PCM WAV file."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(wav, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
