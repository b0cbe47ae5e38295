"""Feature extraction on a CUDA GPU: each pitch method and the content encoder give the CPU's features,
and a Ray Data extraction runs its actors on fractional GPUs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from rvc_ray.config import load_run_config

pytestmark = pytest.mark.gpu

SR = 16000


def _batch(seconds: tuple[float, ...] = (1.0, 1.5), sample_rate: int = SR) -> pa.Table:
    """Segments as the pitch stage gets them: ``wav`` at the model's rate, ``wav_16k`` at 16 kHz."""
    rng = np.random.default_rng(0)

    def tone(s: float, f0: float, rate: int) -> np.ndarray:
        t = np.arange(int(s * rate)) / rate
        return (0.3 * np.sin(2 * np.pi * f0 * t) + 0.003 * rng.standard_normal(t.shape)).astype(np.float32)

    f0s = [140.0 + 40.0 * i for i in range(len(seconds))]
    return pa.table(
        {
            "segment_id": [f"0_{i:05d}_0000" for i in range(len(seconds))],
            "speaker_id": [0] * len(seconds),
            "wav": pa.array(
                [tone(s, f, sample_rate) for s, f in zip(seconds, f0s, strict=True)], pa.list_(pa.float32())
            ),
            "wav_16k": pa.array([tone(s, f, SR) for s, f in zip(seconds, f0s, strict=True)], pa.list_(pa.float32())),
            "is_mute": [False] * len(seconds),
        }
    )


def _rmvpe_weights(path: Path) -> Path:
    import torch

    from rvc_ray.features.rmvpe import build_rmvpe_network

    torch.manual_seed(0)
    torch.save({k: v.half() for k, v in build_rmvpe_network().state_dict().items()}, path)
    return path


@pytest.mark.parametrize("method", ["fcpe", "crepe-tiny", "crepe", "rmvpe"])
def test_pitch_stage_on_the_gpu_matches_the_cpu(tmp_path: Path, method: str) -> None:
    from rvc_ray.features.stages import PitchStage

    overrides = [f"features.f0_method={method}"]
    if method == "rmvpe":  # no weights ship with rvc-ray: a random RMVPE exercises the same GPU code
        overrides.append(f"features.rmvpe_path={_rmvpe_weights(tmp_path / 'rmvpe.pt')}")
    raw = load_run_config("tiny_cpu", overrides).model_dump(mode="json")
    batch = _batch()
    on_gpu = PitchStage(raw, device="cuda")(batch)
    on_cpu = PitchStage(raw, device="cpu")(batch)
    assert on_gpu.column("error").to_pylist() == [None, None]
    for gpu_f0, cpu_f0 in zip(on_gpu.column("f0_raw").to_pylist(), on_cpu.column("f0_raw").to_pylist(), strict=True):
        gpu_f0, cpu_f0 = np.asarray(gpu_f0), np.asarray(cpu_f0)
        assert gpu_f0.shape == cpu_f0.shape
        both = (gpu_f0 > 0) & (cpu_f0 > 0)
        assert np.mean((gpu_f0 > 0) == (cpu_f0 > 0)) > 0.95  # voicing decisions agree
        if both.any():
            cents = 1200 * np.abs(np.log2(gpu_f0[both] / cpu_f0[both]))
            assert np.median(cents) < 5.0, method


def test_content_stage_on_the_gpu_matches_the_cpu() -> None:
    from rvc_ray.features.stages import ContentStage, PitchStage

    # the base-size (HuBERT-base shaped, 768-d) random encoder of the 40k preset, fcpe for the pitch input
    cfg = load_run_config(
        "rvc_v2_40k", ["features.content_encoder_path=null", "features.rmvpe_path=null", "features.f0_method=fcpe"]
    )
    raw = cfg.model_dump(mode="json")
    batch = PitchStage(raw, device="cpu")(_batch(sample_rate=cfg.audio.sample_rate))
    on_gpu = ContentStage(raw, device="cuda")(batch)
    on_cpu = ContentStage(raw, device="cpu")(batch)
    assert on_gpu.column("error").to_pylist() == [None, None]
    for gpu_c, cpu_c in zip(on_gpu.column("content").to_pylist(), on_cpu.column("content").to_pylist(), strict=True):
        gpu_c, cpu_c = np.asarray(gpu_c), np.asarray(cpu_c)
        assert gpu_c.shape == cpu_c.shape
        assert np.linalg.norm(gpu_c - cpu_c) / np.linalg.norm(cpu_c) < 1e-2  # cuDNN convolutions may use TF32


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_ray_data_extraction_on_fractional_gpus(gpu_ray_cluster: None, tmp_path: Path) -> None:
    from rvc_ray.features.extract import run_extract
    from tests.integration.test_extract_pipeline import _write_segments

    cfg = load_run_config(
        "tiny_cpu",
        [
            "features.use_gpu=true",
            "features.pitch_gpus_per_actor=0.25",
            "features.content_gpus_per_actor=0.5",
            "features.f0_method=fcpe",
            "features.validation_fraction=0.3",
        ],
    )
    _write_segments(tmp_path / "dataset", [(0, 1.0, 120.0), (0, 1.2, 130.0), (1, 1.0, 220.0), (1, 0.9, 240.0)])
    result = run_extract(cfg, tmp_path / "dataset", tmp_path / "features")
    assert result.num_failed == 0 and result.num_extracted == result.num_segments >= 4
    assert result.throughput["pitch"] > 0 and result.throughput["content"] > 0
