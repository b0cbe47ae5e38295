"""The conversion pipeline (rvc_ray.inference): DSP steps, options, and whole conversions.

Most tests drive the pipeline with small fakes (a content encoder, an F0 extractor and a generator that
sings a sine at the F0 it is given), so they check the pipeline's own arithmetic quickly; the last
tests use a real tiny voice exported by rvc_ray.model.export.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from pydantic import ValidationError

from rvc_ray.audio.filters import apply_highpass, limit_peak
from rvc_ray.audio.io import AudioDecodeError, AudioTooLongError, decode_audio, downmix_to_mono, resample
from rvc_ray.inference.analysis import content_encoder_spec
from rvc_ray.inference.chunking import ChunkingSettings, find_chunk_cuts, plan_chunks
from rvc_ray.inference.converter import VoiceConverterPipeline
from rvc_ray.inference.envelope import mix_rms_envelope
from rvc_ray.inference.options import ConversionOptions, InvalidOptionError
from rvc_ray.inference.retrieval import mix_retrieved_features, retrieve_features
from tests.voices import export_random_voice, write_random_index

SR16 = 16000


def _tone(seconds: float, hz: float = 200.0, rate: int = SR16, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _wav_bytes(wav: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wav, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


# --------------------------------------------------------------------------- fakes


class _FakeEncoder:
    def __init__(self, dim: int) -> None:
        self.dim = dim

    def encode(self, wav_16k: np.ndarray) -> np.ndarray:
        frames = (len(wav_16k) - 400) // 320 + 1
        return np.random.default_rng(0).standard_normal((frames, self.dim)).astype(np.float32)


class _FakePitch:
    """Reports the true pitch of a pure tone (zero-crossing rate), voiced everywhere."""

    def __init__(self, hz: float) -> None:
        self.hz = hz

    def compute_f0(self, wav_16k: np.ndarray) -> np.ndarray:
        return np.full(len(wav_16k) // 160 + 1, self.hz, np.float32)


class _SineGenerator(torch.nn.Module):
    """``infer`` -> a sine following ``f0_hz`` (what an NSF source does), ``hop`` samples per frame."""

    def __init__(self, hop: int) -> None:
        super().__init__()
        self.hop = hop
        self.weight = torch.nn.Parameter(torch.zeros(1000))
        self.calls: list[tuple[int, int]] = []

    def infer(self, content, lengths, pitch_bins, f0_hz, speaker_id, noise_scale=0.66666, generator=None):
        assert content.shape[:2] == pitch_bins.shape == f0_hz.shape and int(lengths[0]) == content.shape[1]
        assert pitch_bins.dtype == torch.int64 and int(pitch_bins.min()) >= 1 and int(pitch_bins.max()) <= 255
        self.calls.append((content.shape[1], int(speaker_id[0])))
        f0 = f0_hz.repeat_interleave(self.hop, dim=1)
        phase = torch.cumsum(2 * np.pi * f0 / (self.hop * 100), dim=1)
        return (0.5 * torch.sin(phase))[:, None, :]


class _FakeAnalysis:
    def __init__(self, dim: int, hz: float) -> None:
        self.encoder, self.pitch = _FakeEncoder(dim), _FakePitch(hz)
        self.features = SimpleNamespace(rmvpe_path=None)

    def content_encoder(self, spec, voice_name="voice"):
        return self.encoder

    def pitch_extractor(self, method):
        return self.pitch


def _fake_pipeline(sample_rate=40000, hz=200.0, chunking=None, index=None, num_speakers=1) -> VoiceConverterPipeline:
    voice = SimpleNamespace(
        generator=_SineGenerator(sample_rate // 100),
        sample_rate=sample_rate,
        version="v2",
        use_f0=True,
        num_speakers=num_speakers,
        content_dim=8,
        info={},
    )
    return VoiceConverterPipeline(
        voice, index, _FakeAnalysis(8, hz), configured_f0_method="fcpe", name="fake", chunking=chunking
    )


def _dominant_hz(wav: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float(np.fft.rfftfreq(len(wav), 1 / rate)[np.argmax(spectrum)])


# --------------------------------------------------------------------------- options


def test_options_defaults_are_rvc_webui_ui_defaults():
    options = ConversionOptions()
    assert (options.index_rate, options.rms_mix_rate, options.protect, options.f0_up_key) == (0.75, 0.25, 0.33, 0.0)
    assert options.filter_radius == 3 and options.output_sample_rate is None and options.speaker_id == 0


@pytest.mark.parametrize(
    "field,value",
    [
        ("index_rate", 1.5),
        ("protect", 0.6),
        ("rms_mix_rate", -0.1),
        ("f0_up_key", 30),
        ("output_sample_rate", 100),
        ("f0_method", "harvest"),
        ("speaker_id", -1),
        ("no_such_option", 1),
    ],
)
def test_options_reject_out_of_range_and_unknown_fields(field, value):
    with pytest.raises(ValidationError, match=field):
        ConversionOptions.model_validate({field: value})


# --------------------------------------------------------------------------- DSP pieces


def test_decode_audio_resamples_stereo_to_16k_mono():
    stereo = np.stack([_tone(1.0, rate=44100), _tone(1.0, rate=44100)], axis=1)
    decoded = decode_audio(_wav_bytes(stereo, 44100))
    assert decoded.wav_16k.shape == (16000,) and decoded.source_channels == 2 and decoded.source_sample_rate == 44100
    assert abs(_dominant_hz(decoded.wav_16k, SR16) - 200) < 2


def test_decode_audio_is_the_training_downmix_and_resampler():
    """Conversion input goes through the same downmix and soxr resampler (and length rule) as preprocessing."""
    stereo = np.stack([_tone(0.7, rate=44100), _tone(0.7, hz=310.0, rate=44100)], axis=1)
    pcm = sf.read(io.BytesIO(_wav_bytes(stereo, 44100)), dtype="float32", always_2d=True)[0]
    decoded = decode_audio(_wav_bytes(stereo, 44100))
    expected = resample(downmix_to_mono(pcm), 44100, SR16)
    assert decoded.wav_16k.dtype == np.float32 and decoded.wav_16k.shape == (round(0.7 * 44100 * SR16 / 44100),)
    np.testing.assert_array_equal(decoded.wav_16k, expected.astype(np.float32))


@pytest.mark.parametrize(
    "payload,match",
    [
        (b"", "empty"),
        (b"definitely not audio" * 10, "could not be decoded"),
        (_wav_bytes(np.zeros(0), SR16), "0 samples"),
        (_wav_bytes(np.zeros(160, np.float32), SR16), "at least 100 ms"),
    ],
)
def test_decode_audio_names_the_problem(payload, match):
    with pytest.raises(AudioDecodeError, match=match):
        decode_audio(payload, name="the upload")


def test_decode_audio_rejects_non_finite_and_too_long_inputs():
    bad = _tone(0.5)
    bad[100] = np.nan
    with pytest.raises(AudioDecodeError, match="NaN"):
        decode_audio(_wav_bytes(bad, SR16, "FLOAT"))
    with pytest.raises(AudioTooLongError, match="2.0 s long; the limit is 1 s"):
        decode_audio(_wav_bytes(_tone(2.0), SR16), max_duration_s=1.0)


def test_limit_peak_and_highpass():
    assert np.abs(limit_peak(np.array([0.0, 2.0, -1.0], np.float32), 0.95)).max() == pytest.approx(0.95)
    quiet = np.array([0.1, -0.2], np.float32)
    np.testing.assert_array_equal(limit_peak(quiet, 0.95), quiet)
    rumble, voice = _tone(2.0, hz=15.0), _tone(2.0, hz=300.0)
    filtered = apply_highpass(rumble + voice, SR16)
    mid = slice(8000, 24000)  # away from the edges
    assert np.std(filtered[mid] - voice[mid]) < 0.05 * np.std(rumble[mid])


def test_chunk_cut_lands_in_the_quiet_gap_and_chunks_tile_the_input():
    settings = ChunkingSettings(x_pad=0.1, x_query=0.5, x_center=2.0, x_max=2.5)
    wav = np.random.default_rng(0).uniform(-0.5, 0.5, 5 * SR16).astype(np.float32)
    wav[int(1.7 * SR16) : int(1.75 * SR16)] = 0.0  # the quietest place within 2 s +- 0.5 s
    cuts = find_chunk_cuts(wav, settings)
    assert len(cuts) == 2 and int(1.7 * SR16) <= cuts[0] <= int(1.75 * SR16) - 160
    spans = plan_chunks(len(wav), cuts, settings)
    trimmed_frames = [(s.frame_stop - s.frame_start) - 2 * settings.t_pad // 160 for s in spans]
    assert sum(trimmed_frames) == len(wav) // 160  # every 10 ms frame of the input is produced exactly once
    assert find_chunk_cuts(wav[: 2 * SR16], settings) == []


def test_retrieval_exact_match_gives_the_vector_without_nan():
    import faiss

    from rvc_ray.features.index import RetrievalIndex

    vectors = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
    flat = faiss.IndexFlatL2(16)
    flat.add(vectors)
    index = RetrievalIndex(flat)
    retrieved = retrieve_features(vectors[:5], index)  # score 0 for each query's own vector
    assert np.isfinite(retrieved).all()
    np.testing.assert_allclose(retrieved, vectors[:5], atol=1e-5)
    mixed = mix_retrieved_features(vectors[:5] + 1.0, index, index_rate=0.0)
    np.testing.assert_array_equal(mixed, vectors[:5] + 1.0)


def test_retrieval_ignores_missing_neighbours():
    vectors = np.eye(4, dtype=np.float32)

    class _SparseIndex:  # FAISS IVF returns id -1 (and a huge distance) when a list has < k vectors
        def __init__(self):
            self.vectors = vectors

        def search(self, feats, k):
            ids = np.full((len(feats), k), -1, np.int64)
            dist = np.full((len(feats), k), 3.4e38, np.float32)
            ids[0, :2], dist[0, :2] = [1, 2], [1.0, 1.0]
            return dist, ids

    feats = np.full((2, 4), 0.5, np.float32)
    retrieved = retrieve_features(feats, _SparseIndex(), k=4)
    np.testing.assert_allclose(retrieved[0], [0, 0.5, 0.5, 0])  # mean of the two real neighbours
    np.testing.assert_array_equal(retrieved[1], feats[1])  # no neighbour at all: unchanged


def test_rms_mix_rate_one_keeps_output_and_zero_imposes_input_envelope():
    source = np.concatenate([_tone(1.0, amp=0.05), _tone(1.0, amp=0.5)])
    output = _tone(2.0, rate=40000, amp=0.3)
    np.testing.assert_array_equal(mix_rms_envelope(source, output, 40000, 1.0), output)
    imposed = mix_rms_envelope(source, output, 40000, 0.0)
    quiet, loud = np.abs(imposed[4000:16000]).max(), np.abs(imposed[64000:76000]).max()
    assert loud / quiet > 5  # the input's 10x level step is carried over


def test_content_encoder_spec_reads_export_record():
    spec = content_encoder_spec(
        {"content_encoder": {"kind": "random", "identity": "random:tiny:64:v2:seed=1"}}, 64, "v2"
    )
    assert (spec.kind, spec.random_encoder_size) == ("random", "tiny")
    assert content_encoder_spec({"epoch": 3}, 768, "v2").kind == "unknown"  # an RVC-WebUI / Applio export


# --------------------------------------------------------------------------- whole conversions (fakes)


@pytest.mark.parametrize("seconds", [0.3, 2.0])
def test_conversion_length_and_rate(seconds):
    result = _fake_pipeline().convert(_tone(seconds), ConversionOptions())
    assert result.sample_rate == 40000
    assert result.wav.shape == (int(seconds * SR16) // 160 * 400,)  # one 10 ms frame per input frame
    assert np.isfinite(result.wav).all() and np.abs(result.wav).max() <= 0.99 + 1e-6
    assert result.report.num_chunks == 1 and result.report.f0_method == "fcpe"


def test_transpose_shifts_the_f0_fed_to_the_generator():
    pipeline = _fake_pipeline(hz=200.0)
    for key, expected in [(0, 200.0), (12, 400.0), (-5, 200.0 * 2 ** (-5 / 12))]:
        result = pipeline.convert(_tone(1.0), ConversionOptions(f0_up_key=key, rms_mix_rate=1.0))
        assert result.report.median_f0_hz == pytest.approx(expected, rel=1e-3)
        assert _dominant_hz(result.wav, 40000) == pytest.approx(expected, rel=0.02)


def test_long_input_is_chunked_seamlessly_to_the_exact_length():
    settings = ChunkingSettings(x_pad=0.1, x_query=0.5, x_center=2.0, x_max=2.5)
    pipeline = _fake_pipeline(chunking=settings)
    result = pipeline.convert(_tone(5.0), ConversionOptions(rms_mix_rate=1.0))
    assert result.report.num_chunks == 3
    assert result.wav.shape == (5 * 100 * 400,)
    # The fake generator restarts its phase per chunk; the output still has no gap or overlap:
    assert np.isfinite(result.wav).all()


def test_output_sample_rate_is_really_resampled():
    result = _fake_pipeline(hz=300.0).convert(_tone(1.0), ConversionOptions(output_sample_rate=22050, rms_mix_rate=1))
    assert result.sample_rate == 22050 and result.wav.shape[0] == pytest.approx(22050, abs=2)
    assert _dominant_hz(result.wav, 22050) == pytest.approx(300.0, rel=0.02)


def test_speaker_id_beyond_the_voice_is_rejected():
    with pytest.raises(InvalidOptionError, match="speaker_id 2 is out of range.*2 speaker"):
        _fake_pipeline(num_speakers=2).convert(_tone(0.5), ConversionOptions(speaker_id=2))


# --------------------------------------------------------------------------- a real tiny voice


@pytest.fixture(scope="module")
def tiny_voice_files(tmp_path_factory):
    """A tiny v2 voice (random init, exported by rvc_ray.model.export) and a random IVF index."""
    from rvc_ray.config import load_run_config

    cfg = load_run_config("tiny_cpu", ["features.f0_method=fcpe"])
    root = tmp_path_factory.mktemp("tiny_voice")
    voice = export_random_voice(cfg, root / "tiny.pth", name="tiny")
    index = write_random_index(root / "tiny.index", cfg.model.content_dim, num_vectors=300)
    return cfg, voice, index


@pytest.mark.slow
def test_convert_file_with_a_tiny_exported_voice(tiny_voice_files, tmp_path):
    from rvc_ray.inference.converter import convert_file

    cfg, voice, index = tiny_voice_files
    source = tmp_path / "in.flac"
    sf.write(source, _tone(1.2, rate=44100), 44100)
    report = convert_file(
        voice, index, source, tmp_path / "out.wav", ConversionOptions(f0_up_key=5, seed=0), cfg.features
    )
    wav, rate = sf.read(tmp_path / "out.wav", dtype="float32")
    assert rate == 16000 and wav.shape == (int(1.2 * 16000),) and np.isfinite(wav).all()
    assert report.used_index and report.f0_method == "fcpe" and report.output_path.endswith("out.wav")
    assert report.median_f0_hz == pytest.approx(200 * 2 ** (5 / 12), rel=0.03)


@pytest.mark.slow
def test_same_seed_gives_the_same_audio_and_retrieval_changes_it(tiny_voice_files):
    from rvc_ray.inference.analysis import AnalysisModels

    cfg, voice, index = tiny_voice_files
    pipeline = VoiceConverterPipeline.from_files(
        voice, index, AnalysisModels(cfg.features), configured_f0_method="fcpe"
    )
    tone = _tone(0.8)
    first = pipeline.convert(tone, ConversionOptions(seed=1, index_rate=0.0)).wav
    again = pipeline.convert(tone, ConversionOptions(seed=1, index_rate=0.0)).wav
    retrieved = pipeline.convert(tone, ConversionOptions(seed=1, index_rate=1.0)).wav
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, retrieved, atol=1e-4)
    assert pipeline.memory_bytes() > 300 * cfg.model.content_dim * 4


def test_a_voice_needing_hubert_says_what_is_missing(tiny_voice_files):
    from rvc_ray.inference.analysis import AnalysisModels, AnalysisUnavailableError

    cfg, voice, _ = tiny_voice_files
    pipeline = VoiceConverterPipeline.from_files(voice, None, AnalysisModels(cfg.features), configured_f0_method="fcpe")
    pipeline.encoder_spec = content_encoder_spec({"content_encoder": {"kind": "hf"}}, 64, "v2")
    with pytest.raises(AnalysisUnavailableError, match="features.content_encoder_path"):
        pipeline.convert(_tone(0.5))


def test_cpu_bf16_detection_reads_the_flags(tmp_path):
    from rvc_ray.inference.precision import autocast_dtype, cpu_has_native_bf16

    with_amx = tmp_path / "amx"
    with_amx.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f amx_bf16 amx_tile\n")
    without = tmp_path / "plain"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert cpu_has_native_bf16(with_amx) and not cpu_has_native_bf16(without)
    assert not cpu_has_native_bf16(tmp_path / "missing")
    assert autocast_dtype("fp32", "cpu") is None and autocast_dtype("bf16", "cpu") == "bfloat16"
    assert autocast_dtype("auto", "cuda") is None
    assert autocast_dtype("auto", "cpu") == ("bfloat16" if cpu_has_native_bf16() else None)
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        autocast_dtype("fp8", "cpu")


@pytest.mark.slow
def test_folded_weight_norm_is_exact_and_bf16_synthesis_stays_within_tolerance(tiny_voice_files):
    """Folding changes nothing; bf16 autocast keeps the waveform within 20 dB SNR of fp32 (docs/serving.md)."""
    from rvc_ray.inference.analysis import AnalysisModels
    from rvc_ray.model.export import load_voice

    cfg, voice, _ = tiny_voice_files
    analysis = AnalysisModels(cfg.features)
    fp32 = VoiceConverterPipeline.from_files(voice, None, analysis, configured_f0_method="fcpe", precision="fp32")
    bf16 = VoiceConverterPipeline.from_files(voice, None, analysis, configured_f0_method="fcpe", precision="bf16")
    assert fp32.folded_weight_norms > 0 and fp32.autocast_dtype is None and bf16.autocast_dtype == "bfloat16"
    tone = _tone(1.0)
    options = ConversionOptions(seed=2, index_rate=0.0, rms_mix_rate=1.0)
    reference = fp32.convert(tone, options)
    assert reference.report.synthesis_dtype == "float32"
    raw = load_voice(voice).generator  # weight norm not folded
    frames = 30
    inputs = (
        torch.randn(1, frames, cfg.model.content_dim),
        torch.tensor([frames]),
        torch.randint(1, 255, (1, frames)),
        torch.rand(1, frames) * 200 + 100,
        torch.tensor([0]),
    )
    with torch.inference_mode():
        folded_out = fp32.voice.generator.infer(*inputs, generator=torch.Generator().manual_seed(0))
        raw_out = raw.infer(*inputs, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(folded_out, raw_out, rtol=1e-4, atol=1e-5)
    low = bf16.convert(tone, options)
    assert low.report.synthesis_dtype == "bfloat16" and low.wav.shape == reference.wav.shape
    noise = np.mean((low.wav - reference.wav) ** 2)
    snr_db = 10 * np.log10(np.mean(reference.wav**2) / max(noise, 1e-20))
    assert snr_db > 20, snr_db
