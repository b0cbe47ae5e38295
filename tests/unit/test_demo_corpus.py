"""The built-in demo corpus: deterministic files in several formats, their ground-truth F0 beside the corpus."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rvc_ray.demo_corpus import F0_FRAME_RATE, generate_demo_corpus, truth_f0_dir


def test_corpus_formats_durations_and_truth_f0(tmp_path: Path) -> None:
    files = generate_demo_corpus(tmp_path / "corpus", num_speakers=2, seconds_per_speaker=8.0, seed=3)
    assert {f.speaker for f in files} == {0, 1}
    in_corpus = sorted(p.relative_to(tmp_path / "corpus") for p in (tmp_path / "corpus").rglob("*") if p.is_file())
    assert in_corpus == sorted(f.path.relative_to(tmp_path / "corpus") for f in files), "only audio in the corpus"
    assert truth_f0_dir(tmp_path / "corpus") == tmp_path / "corpus_f0"
    assert all(f.f0_path == tmp_path / "corpus_f0" / f.path.parent.name / f"{f.path.stem}.f0.npy" for f in files)
    by_speaker = {f.speaker: f for f in files}
    assert sf.info(by_speaker[0].path).samplerate == 44100 and sf.info(by_speaker[0].path).subtype == "PCM_16"
    assert sf.info(by_speaker[1].path).samplerate == 48000 and sf.info(by_speaker[1].path).subtype == "PCM_24"
    for f in files:
        wav, sr = sf.read(f.path)
        f0 = np.load(f.f0_path)
        assert len(f0) == len(wav) * F0_FRAME_RATE // sr + 1
        voiced = f0[f0 > 0]
        assert 0.15 < len(voiced) / len(f0) < 0.8, "speech-like voicing ratio"
        assert np.abs(wav).max() < 1.0
        # silences between phrases exist (what the slicer cuts on): some 100 ms windows are near-silent
        frames = wav[: len(wav) // 4410 * 4410].reshape(-1, 4410)
        assert (np.sqrt((frames**2).mean(axis=1)) < 10 ** (-50 / 20)).any()
    assert np.median(np.load(by_speaker[0].f0_path)[np.load(by_speaker[0].f0_path) > 0]) < 160
    assert np.median(np.load(by_speaker[1].f0_path)[np.load(by_speaker[1].f0_path) > 0]) > 160


def test_pitch_of_the_audio_follows_the_sidecar(tmp_path: Path) -> None:
    (f,) = generate_demo_corpus(tmp_path, num_speakers=1, seconds_per_speaker=6.0, seed=1)
    wav, sr = sf.read(f.path)
    f0 = np.load(f.f0_path)
    voiced = np.flatnonzero(f0 > 0)
    frame = voiced[len(voiced) // 2]
    segment = wav[int(frame / 100 * sr) - 1024 : int(frame / 100 * sr) + 1024]
    spectrum = np.abs(np.fft.rfft(segment * np.hanning(len(segment)), 16 * len(segment)))
    freqs = np.fft.rfftfreq(16 * len(segment), 1 / sr)
    band = (freqs > 50) & (freqs < 400)
    fundamental = freqs[band][np.argmax(spectrum[band])]
    assert fundamental == pytest.approx(f0[frame], rel=0.08)


def test_same_arguments_write_identical_bytes(tmp_path: Path) -> None:
    a = generate_demo_corpus(tmp_path / "a", num_speakers=1, seconds_per_speaker=4.0, seed=5)
    b = generate_demo_corpus(tmp_path / "b", num_speakers=1, seconds_per_speaker=4.0, seed=5)
    digest = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()  # noqa: E731
    assert [digest(x.path) for x in a] == [digest(x.path) for x in b]
    c = generate_demo_corpus(tmp_path / "c", num_speakers=1, seconds_per_speaker=4.0, seed=6)
    assert digest(a[0].path) != digest(c[0].path)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_speakers"):
        generate_demo_corpus(tmp_path, num_speakers=0)
    with pytest.raises(ValueError, match="seconds_per_speaker"):
        generate_demo_corpus(tmp_path, seconds_per_speaker=0)
