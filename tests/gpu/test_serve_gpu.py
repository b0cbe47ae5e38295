"""A conversion on the GPU through the public conversion API (the pipeline Ray Serve replicas run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def test_conversion_on_the_gpu_matches_the_cpu(tmp_path: Path) -> None:
    from rvc_ray.config import load_run_config
    from rvc_ray.inference.analysis import AnalysisModels
    from rvc_ray.inference.converter import VoiceConverterPipeline
    from rvc_ray.inference.options import ConversionOptions
    from tests.voices import export_random_voice

    cfg = load_run_config("tiny_cpu", ["features.f0_method=fcpe"])
    voice = export_random_voice(cfg, tmp_path / "tiny.pth", name="tiny")
    tone = (0.3 * np.sin(2 * np.pi * 200 * np.arange(24_000) / 16_000)).astype(np.float32)
    options = ConversionOptions(f0_up_key=5, seed=0, index_rate=0.0)
    results = {}
    for device in ("cuda", "cpu"):
        pipeline = VoiceConverterPipeline.from_files(
            voice, None, AnalysisModels(cfg.features, device=device), configured_f0_method="fcpe", device=device
        )
        results[device] = pipeline.convert(tone, options)
    gpu, cpu = results["cuda"], results["cpu"]
    assert gpu.wav.shape == cpu.wav.shape and np.isfinite(gpu.wav).all()
    assert gpu.report.median_f0_hz == pytest.approx(200 * 2 ** (5 / 12), rel=0.03)
    assert gpu.report.real_time_factor > 0
