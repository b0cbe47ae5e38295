"""A deterministic generator of voice-like recordings with known pitch: the built-in demo corpus.

Nothing is downloaded. Each speaker gets its own base pitch and vocal-tract size; each utterance is a
phrase of syllables made of a harmonic glottal source (known F0 contour with glide and vibrato),
formant filtering per vowel, unvoiced noise bursts (fricatives), short pauses, longer silences between
phrases (where the slicer cuts) and varied loudness. Files are written in different formats per speaker
(44.1 kHz 16-bit, 48 kHz 24-bit, ...), each with its ground-truth F0 ``<stem>.f0.npy`` (float32 Hz at 100 frames
per second, frame k is time k * 0.01 s, 0 where unvoiced). The F0 files go to a sibling folder of the corpus,
``<corpus>_f0/spk<i>/`` (:func:`truth_f0_dir`), so that the corpus folder holds only audio and preprocessing
reads no F0 file as input.

The output is a pure function of the arguments: the same call writes byte-identical files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DemoFile", "F0_FRAME_RATE", "generate_demo_corpus", "synthesize_utterance", "truth_f0_dir"]

F0_FRAME_RATE = 100  # ground-truth F0 frames per second

# Per speaker: (base F0 Hz, formant scale, sample rate, soundfile subtype)
_SPEAKERS = (
    (118.0, 1.00, 44100, "PCM_16"),
    (215.0, 1.17, 48000, "PCM_24"),
    (165.0, 1.08, 32000, "PCM_16"),
    (290.0, 1.25, 22050, "PCM_16"),
)
# (F1, F2, F3) in Hz of a few vowels for an adult male tract; scaled per speaker.
_VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410))
_FILE_SECONDS = 15.0


@dataclass(frozen=True)
class DemoFile:
    """One generated recording and its ground-truth F0 file (outside the corpus folder)."""

    path: Path
    f0_path: Path
    speaker: int
    sample_rate: int
    duration_s: float


def _resonator(signal: np.ndarray, freq: float, bandwidth: float, sample_rate: int) -> np.ndarray:
    """A 2-pole resonator (formant) with unit gain at its centre frequency."""
    from scipy.signal import lfilter

    radius = np.exp(-np.pi * bandwidth / sample_rate)
    theta = 2 * np.pi * freq / sample_rate
    a = [1.0, -2 * radius * np.cos(theta), radius**2]
    b = [1.0 - radius]
    return lfilter(b, a, signal)


def _glottal_source(f0_hz: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Sum of harmonics with 1/k amplitudes (a band-limited sawtooth) following ``f0_hz`` per sample."""
    phase = 2 * np.pi * np.cumsum(f0_hz) / sample_rate + rng.uniform(0, 2 * np.pi)
    out = np.zeros_like(f0_hz)
    max_f0 = float(f0_hz.max()) if f0_hz.size else 1.0
    for k in range(1, int(min(40, (sample_rate / 2 - 200) // max(max_f0, 1.0))) + 1):
        out += np.sin(k * phase) / k
    return out


def synthesize_utterance(
    base_f0: float, formant_scale: float, sample_rate: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One phrase of 3-8 syllables.

    Returns:
        wav: [T] float64 samples at ``sample_rate`` (peak about 1 before gain)
        voiced_f0: [T] float64 per-sample ground-truth F0 in Hz (0 where unvoiced or silent)
    """
    pieces: list[np.ndarray] = []
    f0_pieces: list[np.ndarray] = []
    glide = rng.uniform(-0.25, 0.25)
    for _syllable in range(int(rng.integers(3, 9))):
        if rng.random() < 0.45:  # fricative onset: band-passed noise, unvoiced
            n = int(sample_rate * rng.uniform(0.04, 0.09))
            noise = _resonator(rng.standard_normal(n), min(4500.0, sample_rate * 0.4), 2000.0, sample_rate)
            noise *= 0.25 / (np.abs(noise).max() + 1e-9) * np.hanning(n)
            pieces.append(noise)
            f0_pieces.append(np.zeros(n))
        n = int(sample_rate * rng.uniform(0.14, 0.32))
        t = np.arange(n) / sample_rate
        start = base_f0 * 2 ** (glide + rng.uniform(-0.2, 0.2))
        end = start * 2 ** rng.uniform(-0.3, 0.3)
        vibrato = 2 ** (0.35 / 12 * np.sin(2 * np.pi * rng.uniform(4.5, 6.5) * t + rng.uniform(0, 6.28)))
        f0 = np.geomspace(start, end, n) * vibrato
        source = _glottal_source(f0, sample_rate, rng)
        f1, f2, f3 = (f * formant_scale for f in _VOWELS[int(rng.integers(len(_VOWELS)))])
        voiced = sum(
            gain * _resonator(source, freq, bw, sample_rate)
            for freq, bw, gain in ((f1, 90.0, 1.0), (f2, 110.0, 0.6), (f3, 160.0, 0.3))
            if freq < sample_rate / 2 - 100
        )
        ramp = min(int(0.02 * sample_rate), n // 2)
        envelope = np.ones(n)
        envelope[:ramp] = np.linspace(0, 1, ramp)
        envelope[n - ramp :] = np.linspace(1, 0, ramp)
        voiced = voiced / (np.abs(voiced).max() + 1e-9) * envelope
        pieces.append(voiced)
        f0_pieces.append(np.where(envelope >= 0.5, f0, 0.0))
        gap = int(sample_rate * rng.uniform(0.03, 0.12))  # short pause inside the phrase
        pieces.append(np.zeros(gap))
        f0_pieces.append(np.zeros(gap))
    return np.concatenate(pieces), np.concatenate(f0_pieces)


def _frame_f0(voiced_f0: np.ndarray, sample_rate: int) -> np.ndarray:
    """Per-sample F0 -> F0 at 100 frames/s (frame k = sample round(k * sr / 100)); 0 where unvoiced."""
    num_frames = len(voiced_f0) * F0_FRAME_RATE // sample_rate + 1
    idx = np.minimum((np.arange(num_frames) * sample_rate) // F0_FRAME_RATE, len(voiced_f0) - 1)
    return voiced_f0[idx].astype(np.float32)


def _synthesize_file(speaker: int, seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray, int, str]:
    base_f0, formant_scale, sample_rate, subtype = _SPEAKERS[speaker % len(_SPEAKERS)]
    rng = np.random.default_rng(seed)
    total = int(seconds * sample_rate)
    wav = np.zeros(total)
    f0 = np.zeros(total)
    pos = int(sample_rate * rng.uniform(0.3, 0.8))  # leading silence
    while True:
        phrase, phrase_f0 = synthesize_utterance(base_f0, formant_scale, sample_rate, rng)
        if pos + len(phrase) > total - int(0.3 * sample_rate):
            break
        gain = 10 ** (rng.uniform(-14.0, -2.0) / 20)  # varied loudness per phrase
        wav[pos : pos + len(phrase)] = phrase * gain
        f0[pos : pos + len(phrase)] = phrase_f0
        pos += len(phrase) + int(sample_rate * rng.uniform(0.5, 1.2))  # silence between phrases
    wav += rng.standard_normal(total) * 10 ** (-62 / 20)  # faint noise floor (about -62 dBFS)
    return wav.astype(np.float32), _frame_f0(f0, sample_rate), sample_rate, subtype


def truth_f0_dir(out_dir: Path) -> Path:
    """Where :func:`generate_demo_corpus` writes the ground-truth F0 of the corpus in ``out_dir``: ``<out_dir>_f0``."""
    out_dir = Path(out_dir).absolute()
    return out_dir.with_name(f"{out_dir.name}_f0")


def generate_demo_corpus(
    out_dir: Path, *, num_speakers: int = 2, seconds_per_speaker: float = 60.0, seed: int = 0
) -> list[DemoFile]:
    """Write the demo corpus to ``out_dir/spk<i>/spk<i>_<nn>.wav`` and return its files.

    The ground-truth F0 of each file goes to ``truth_f0_dir(out_dir)/spk<i>/spk<i>_<nn>.f0.npy``, outside
    ``out_dir``. Speakers cycle through 44.1 kHz/16-bit, 48 kHz/24-bit, 32 kHz/16-bit and 22.05 kHz/16-bit mono
    WAV. Each speaker's audio is split into files of up to 15 s.
    """
    import soundfile as sf

    if num_speakers < 1:
        raise ValueError(f"num_speakers must be >= 1, got {num_speakers}")
    if seconds_per_speaker <= 0:
        raise ValueError(f"seconds_per_speaker must be > 0, got {seconds_per_speaker}")
    files: list[DemoFile] = []
    for speaker in range(num_speakers):
        speaker_dir = Path(out_dir) / f"spk{speaker}"
        speaker_dir.mkdir(parents=True, exist_ok=True)
        f0_dir = truth_f0_dir(out_dir) / f"spk{speaker}"
        f0_dir.mkdir(parents=True, exist_ok=True)
        remaining = seconds_per_speaker
        index = 0
        while remaining > 1e-6:
            seconds = min(_FILE_SECONDS, remaining)
            if remaining - seconds < 3.0:  # fold a short tail into this file
                seconds = remaining
            wav, f0, sample_rate, subtype = _synthesize_file(speaker, seconds, seed * 100_003 + speaker * 1009 + index)
            path = speaker_dir / f"spk{speaker}_{index:02d}.wav"
            sf.write(path, wav, sample_rate, subtype=subtype)
            f0_path = f0_dir / f"spk{speaker}_{index:02d}.f0.npy"
            np.save(f0_path, f0)
            files.append(DemoFile(path, f0_path, speaker, sample_rate, len(wav) / sample_rate))
            remaining -= seconds
            index += 1
    return files
