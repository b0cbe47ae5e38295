"""Voice conversion with a trained RVC voice: the pipeline shared by ``rvc-ray convert`` and the server.

It follows RVC-WebUI's inference pipeline step by step (docs/rvc-reference.md §8):

1. the voice (``.pth``) and its retrieval index are loaded once (:meth:`VoiceConverterPipeline.from_files`);
2. the input is decoded to 16 kHz mono and peak-limited to 0.95;
3. a 48 Hz order-5 Butterworth high-pass is applied zero-phase (``sosfiltfilt``: the filter preprocessing
   applies to the training data, :func:`rvc_ray.audio.filters.apply_highpass`);
4. long inputs are cut at quiet points (``x_pad/x_query/x_center/x_max`` = 1/6/38/41 s, RVC's fp32 row);
5. the whole input is reflect-padded by ``t_pad = x_pad`` seconds;
6. F0 is computed once on the padded input, transposed by ``f0_up_key`` semitones, median-filtered
   (``filter_radius >= 3``) and quantised to coarse bins 1..255;
7. per chunk: content features, index retrieval (k = 8, ``(1/d^2)^2`` weights, NaN-free), ``index_rate``
   mixing, x2 upsampling, ``protect`` for unvoiced frames, synthesis, trimming of the padding;
8. the chunks are concatenated;
9. ``rms_mix_rate`` mixes in the input's loudness envelope;
10. the output is resampled (soxr, :func:`rvc_ray.audio.io.resample`) to ``output_sample_rate`` if asked;
11. and peak-limited to 0.99.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rvc_ray.audio.filters import apply_highpass, limit_peak
from rvc_ray.audio.io import ANALYSIS_SAMPLE_RATE, AudioDecodeError, decode_audio, resample
from rvc_ray.inference.analysis import AnalysisModels, content_encoder_spec
from rvc_ray.inference.chunking import HOP_16K, ChunkingSettings, find_chunk_cuts, plan_chunks
from rvc_ray.inference.defaults import choose_f0_method, f0_method_problem, trained_f0_method
from rvc_ray.inference.envelope import mix_rms_envelope
from rvc_ray.inference.options import (
    ConversionOptions,
    ConversionReport,
    ConversionResult,
    InvalidOptionError,
    VoiceLoadError,
)
from rvc_ray.inference.precision import autocast_dtype, fold_weight_norm
from rvc_ray.inference.retrieval import mix_retrieved_features

if TYPE_CHECKING:
    from rvc_ray.config import FeatureConfig

__all__ = ["VoiceConverterPipeline", "convert_file"]

INPUT_PEAK = 0.95
OUTPUT_PEAK = 0.99


class VoiceConverterPipeline:
    """One loaded voice (generator + optional index) bound to shared analysis models.

    Args:
        voice: a ``LoadedVoice`` (``rvc_ray.model.export.load_voice``).
        index: the voice's retrieval index (``rvc_ray.features.index.load_index``) or ``None``.
        analysis: the shared content-encoder / F0 cache.
        configured_f0_method: the server's / config's F0 method; used when a request names none and it
            can run here (else the voice's own, else a bundled one: :func:`choose_f0_method`).
        name: the voice's name in reports and errors.
        chunking: long-input settings (RVC fp32 defaults).
        device: torch device of the generator.
        precision: ``auto`` (bf16 synthesis on CPUs that compute bf16 natively, else fp32), ``fp32``
            or ``bf16`` (:mod:`rvc_ray.inference.precision`).

    The generator's weight norms are folded into plain weights once, here (inference never trains it).
    """

    def __init__(
        self,
        voice: Any,
        index: Any | None,
        analysis: AnalysisModels,
        *,
        configured_f0_method: str | None,
        name: str,
        chunking: ChunkingSettings | None = None,
        device: str = "cpu",
        precision: str = "auto",
    ) -> None:
        self.voice = voice
        self.index = index
        self.analysis = analysis
        self.rmvpe_path = analysis.features.rmvpe_path
        self.f0_choice = choose_f0_method(None, configured_f0_method, trained_f0_method(voice.info), self.rmvpe_path)
        self.name = name
        self.chunking = chunking or ChunkingSettings()
        self.device = device
        self.autocast_dtype = autocast_dtype(precision, "cuda" if str(device).startswith("cuda") else "cpu")
        self.folded_weight_norms = fold_weight_norm(voice.generator)
        self.encoder_spec = content_encoder_spec(voice.info, voice.content_dim, voice.version)
        if index is not None and index.vectors.shape[1] != voice.content_dim:
            raise VoiceLoadError(
                f"voice {name!r}: its index holds {index.vectors.shape[1]}-d vectors but the voice uses "
                f"{voice.content_dim}-d content features"
            )

    @classmethod
    def from_files(
        cls,
        voice_path: Path,
        index_path: Path | None,
        analysis: AnalysisModels,
        *,
        configured_f0_method: str | None,
        name: str | None = None,
        chunking: ChunkingSettings | None = None,
        device: str = "cpu",
        precision: str = "auto",
    ) -> VoiceConverterPipeline:
        """Load ``voice_path`` (an rvc-ray, RVC-WebUI or Applio ``.pth``) and ``index_path``.

        Raises:
            VoiceLoadError: unreadable or inconsistent voice/index (the message names the voice, not the path).
        """
        from rvc_ray.features.index import load_index
        from rvc_ray.model.export import load_voice

        name = name or Path(voice_path).stem
        try:
            voice = load_voice(voice_path, device=device)
        except Exception as exc:  # noqa: BLE001 - any failure of a user-supplied file is a load error
            raise VoiceLoadError(f"voice {name!r} could not be loaded: {type(exc).__name__}: {exc}") from exc
        index = None
        if index_path is not None:
            try:
                index = load_index(index_path)
            except Exception as exc:  # noqa: BLE001
                raise VoiceLoadError(f"the index of voice {name!r} could not be loaded: {exc}") from exc
        return cls(
            voice,
            index,
            analysis,
            configured_f0_method=configured_f0_method,
            name=name,
            chunking=chunking,
            device=device,
            precision=precision,
        )

    @property
    def sample_rate(self) -> int:
        return int(self.voice.sample_rate)

    def memory_bytes(self) -> int:
        """Bytes held by this voice: generator parameters and buffers plus the index vectors (twice: FAISS + copy)."""
        tensors = list(self.voice.generator.parameters()) + list(self.voice.generator.buffers())
        total = sum(t.numel() * t.element_size() for t in tensors)
        if self.index is not None:
            total += 2 * int(self.index.vectors.nbytes)
        return total

    # ------------------------------------------------------------------ steps

    def _check_options(self, options: ConversionOptions) -> str:
        if options.speaker_id >= int(self.voice.num_speakers):
            raise InvalidOptionError(
                f"speaker_id {options.speaker_id} is out of range: voice {self.name!r} has "
                f"{self.voice.num_speakers} speaker(s) (0..{int(self.voice.num_speakers) - 1})"
            )
        if options.f0_method is None or not self.voice.use_f0:
            return self.f0_choice.method
        problem = f0_method_problem(options.f0_method, self.rmvpe_path)
        if problem is not None:
            raise InvalidOptionError(
                f"f0_method {options.f0_method!r} cannot run on this server ({problem}); leave it out to use "
                f"{self.f0_choice.method!r} ({self.f0_choice.reason}), or pick another"
            )
        return options.f0_method

    def _compute_pitch(
        self, padded_16k: np.ndarray, num_frames: int, method: str, options: ConversionOptions
    ) -> tuple[np.ndarray, np.ndarray]:
        """F0 of the padded input -> (``pitch_bins [F]`` int64, ``f0_hz [F]`` float32), ``F = len // 160``."""
        from scipy import signal

        from rvc_ray.features.pitch import compute_pitch_bins

        f0 = np.asarray(self.analysis.pitch_extractor(method).compute_f0(padded_16k), dtype=np.float32)
        f0 = np.pad(f0, (0, max(0, num_frames - f0.shape[0])))[:num_frames]
        if options.filter_radius >= 3:
            f0 = signal.medfilt(f0, 3).astype(np.float32)
        f0 = (f0 * np.float32(2.0 ** (options.f0_up_key / 12.0))).astype(np.float32)
        return compute_pitch_bins(f0).astype(np.int64), f0

    def _autocast(self) -> Any:
        """bf16 autocast for the content encoder and synthesis when ``precision`` asks for it, else a no-op."""
        import torch

        return torch.autocast(
            "cuda" if str(self.device).startswith("cuda") else "cpu",
            dtype=getattr(torch, self.autocast_dtype or "float32"),
            enabled=self.autocast_dtype is not None,
        )

    def _convert_chunk(
        self,
        segment_16k: np.ndarray,
        pitch_bins: np.ndarray | None,
        f0_hz: np.ndarray | None,
        options: ConversionOptions,
        noise: Any,
        timings: dict[str, float],
    ) -> np.ndarray:
        """One padded chunk -> its converted audio ``[F * hop]`` at the voice's rate (padding not trimmed yet)."""
        import torch

        started = time.perf_counter()
        encoder = self.analysis.content_encoder(self.encoder_spec, self.name)
        with self._autocast():
            feats = np.asarray(_to_numpy(encoder.encode(segment_16k)), dtype=np.float32)  # [T50, C]
        timings["content"] += time.perf_counter() - started
        started = time.perf_counter()
        use_protect = self.voice.use_f0 and options.protect < 0.5
        feats0 = feats.copy() if use_protect else None
        feats = mix_retrieved_features(feats, self.index, options.index_rate)
        timings["retrieval"] += time.perf_counter() - started
        started = time.perf_counter()
        # x2 nearest upsampling (50 -> 100 frames/s), then edge-padded to one frame per 160 samples. RVC
        # truncates to the ~2 frames shorter content instead, so its output is ~20 ms short per chunk; the
        # padded frames fall inside the reflect padding, which is trimmed, so no audio is invented.
        num_frames = segment_16k.shape[0] // HOP_16K
        if f0_hz is not None:
            num_frames = min(num_frames, f0_hz.shape[0])
        feats = _fit_frames(np.repeat(feats, 2, axis=0), num_frames)
        if f0_hz is not None and pitch_bins is not None:
            pitch_bins, f0_hz = pitch_bins[:num_frames], f0_hz[:num_frames]
            if feats0 is not None:
                feats0 = _fit_frames(np.repeat(feats0, 2, axis=0), num_frames)
                mask = np.where(f0_hz < 1.0, options.protect, 1.0).astype(np.float32)[:, None]
                feats = feats * mask + feats0 * (1.0 - mask)
        with torch.inference_mode(), self._autocast():
            content = torch.from_numpy(np.ascontiguousarray(feats))[None].to(self.device)
            wav = self.voice.generator.infer(
                content,
                torch.tensor([num_frames], device=self.device),
                torch.from_numpy(pitch_bins)[None].to(self.device) if pitch_bins is not None else None,
                torch.from_numpy(f0_hz)[None].to(self.device) if f0_hz is not None else None,
                torch.tensor([options.speaker_id], device=self.device),
                generator=noise,
            )
        timings["synthesis"] += time.perf_counter() - started
        return wav.reshape(-1).float().cpu().numpy()

    def convert(self, wav_16k: np.ndarray, options: ConversionOptions | None = None) -> ConversionResult:
        """Convert ``wav_16k [N]`` (16 kHz mono float) with this voice.

        Raises:
            InvalidOptionError, AnalysisUnavailableError, AudioDecodeError (input too short).
        """
        import torch

        options = options or ConversionOptions()
        method = self._check_options(options)
        started_total = time.perf_counter()
        timings = {"f0": 0.0, "content": 0.0, "retrieval": 0.0, "synthesis": 0.0, "post": 0.0}
        if wav_16k.ndim != 1 or wav_16k.shape[0] < HOP_16K * 2:
            raise AudioDecodeError("the input must be mono audio of at least 20 ms")
        limited = limit_peak(np.asarray(wav_16k, dtype=np.float32), INPUT_PEAK)
        audio = apply_highpass(limited, ANALYSIS_SAMPLE_RATE).astype(np.float32)
        settings = self.chunking
        spans = plan_chunks(audio.shape[0], find_chunk_cuts(audio, settings), settings)
        padded = np.pad(audio, (settings.t_pad, settings.t_pad), mode="reflect")
        num_frames = padded.shape[0] // HOP_16K
        pitch_bins = f0_hz = None
        started = time.perf_counter()
        if self.voice.use_f0:
            pitch_bins, f0_hz = self._compute_pitch(padded, num_frames, method, options)
        timings["f0"] = time.perf_counter() - started
        noise = torch.Generator(device=self.device).manual_seed(options.seed) if options.seed is not None else None
        t_pad_tgt = settings.t_pad_target(self.sample_rate)
        pieces = []
        for span in spans:
            chunk = self._convert_chunk(
                padded[span.start : span.stop],
                pitch_bins[span.frame_start : span.frame_stop] if pitch_bins is not None else None,
                f0_hz[span.frame_start : span.frame_stop] if f0_hz is not None else None,
                options,
                noise,
                timings,
            )
            pieces.append(chunk[t_pad_tgt : chunk.shape[0] - t_pad_tgt])
        started = time.perf_counter()
        out = np.concatenate(pieces).astype(np.float32)
        out = mix_rms_envelope(audio, out, self.sample_rate, options.rms_mix_rate)
        out_rate = options.output_sample_rate or self.sample_rate
        out = limit_peak(resample(out, self.sample_rate, out_rate), OUTPUT_PEAK)
        timings["post"] = time.perf_counter() - started
        processing = time.perf_counter() - started_total
        voiced = (
            f0_hz[settings.t_pad // HOP_16K : num_frames - settings.t_pad // HOP_16K] if f0_hz is not None else None
        )
        input_s = wav_16k.shape[0] / ANALYSIS_SAMPLE_RATE
        report = ConversionReport(
            voice=self.name,
            input_duration_s=round(input_s, 4),
            output_duration_s=round(out.shape[0] / out_rate, 4),
            output_sample_rate=out_rate,
            num_chunks=len(spans),
            f0_method=method if self.voice.use_f0 else "none",
            used_index=self.index is not None and options.index_rate > 0,
            voiced_fraction=round(float((voiced > 0).mean()), 4) if voiced is not None and voiced.size else 0.0,
            median_f0_hz=round(float(np.median(voiced[voiced > 0])), 2)
            if voiced is not None and (voiced > 0).any()
            else 0.0,
            processing_s=round(processing, 4),
            real_time_factor=round(processing / max(input_s, 1e-9), 4),
            timings_s={k: round(v, 4) for k, v in timings.items()},
            synthesis_dtype=self.autocast_dtype or "float32",
        )
        return ConversionResult(wav=out, sample_rate=out_rate, report=report)


def _fit_frames(feats: np.ndarray, num_frames: int) -> np.ndarray:
    """``[T, C]`` -> ``[num_frames, C]``: truncate, or repeat the last frame."""
    if feats.shape[0] >= num_frames:
        return feats[:num_frames]
    return np.pad(feats, ((0, num_frames - feats.shape[0]), (0, 0)), mode="edge")


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    value = np.asarray(value)
    return value[0] if value.ndim == 3 else value


def convert_file(
    voice_path: Path,
    index_path: Path | None,
    input_path: Path,
    output_path: Path,
    options: ConversionOptions,
    features: FeatureConfig,
    precision: str = "auto",
) -> ConversionReport:
    """Convert one audio file offline (what ``rvc-ray convert`` runs).

    The output format follows ``output_path``'s extension (``.wav`` -> 16-bit PCM, ``.flac``, ``.ogg``).
    The F0 method is ``options.f0_method``, else ``features.f0_method`` when it can run here, else the
    voice's own, else a bundled one (:func:`rvc_ray.inference.defaults.choose_f0_method`).
    """
    import soundfile as sf

    analysis = AnalysisModels(features)
    pipeline = VoiceConverterPipeline.from_files(
        Path(voice_path),
        Path(index_path) if index_path else None,
        analysis,
        configured_f0_method=features.f0_method,
        precision=precision,
    )
    decoded = decode_audio(Path(input_path), name=f"input file {Path(input_path).name!r}")
    result = pipeline.convert(decoded.wav_16k, options)
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    subtype = "PCM_16" if output_path.suffix.lower() in (".wav", "") else None
    sf.write(str(output_path), result.wav, result.sample_rate, subtype=subtype)
    return ConversionReport(**{**result.report.__dict__, "output_path": str(output_path)})
