"""Pitch: coarse quantisation, the torchaudio stand-in, RMVPE architecture/decoding, accuracy on the demo corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rvc_ray.demo_corpus import truth_f0_dir
from rvc_ray.features.pitch import build_pitch_extractor, compute_pitch_bins, expected_f0_frames


@pytest.mark.parametrize(
    ("hz", "coarse"),
    [(0.0, 1), (50.0, 1), (100.0, 20), (200.0, 54), (440.0, 122), (1000.0, 238), (1100.0, 255), (3000.0, 255)],
)
def test_pitch_bins_match_hand_computed_values(hz: float, coarse: int) -> None:
    assert compute_pitch_bins(np.array([hz], np.float32)).tolist() == [coarse]


def test_pitch_bins_dtype_range_and_below_min() -> None:
    bins = compute_pitch_bins(np.array([0.0, 30.0, 49.0, 51.0, 700.0, 5000.0]))
    assert bins.dtype == np.int32
    assert bins.min() >= 1 and bins.max() <= 255
    assert bins[:3].tolist() == [1, 1, 1]  # below f0_min (or unvoiced) -> 1


def test_torchaudio_stand_in_lets_crepe_and_fcpe_import_and_then_leaves() -> None:
    import importlib.util
    import sys

    from rvc_ray.features.pitch import import_torchcrepe, import_torchfcpe

    torchcrepe = import_torchcrepe()
    import_torchfcpe()
    stub = torchcrepe.load.torchaudio  # the module torchcrepe bound at import
    if getattr(stub, "__rvc_ray_torchaudio_stand_in__", False):
        with pytest.raises(RuntimeError, match="never uses"):
            stub.load("x.wav")
        with pytest.raises(RuntimeError, match="stand-in"):
            stub.transforms.Resample(44100, 16000)
        # gone from sys.modules again: transformers' availability probe must still see no torchaudio
        assert "torchaudio" not in sys.modules and importlib.util.find_spec("torchaudio") is None
        import transformers  # noqa: F401  (failed with "torchaudio.__spec__ is None" while a stub was registered)


def test_rmvpe_without_path_is_a_clear_error(tiny_cfg) -> None:
    features = tiny_cfg.features.model_copy(update={"f0_method": "rmvpe"})
    with pytest.raises(ValueError, match="features.rmvpe_path"):
        build_pitch_extractor("rmvpe", features)
    with pytest.raises(ValueError, match="unknown f0 method"):
        build_pitch_extractor("pm", features)


def test_rmvpe_decoding_of_a_salience_peak() -> None:
    from rvc_ray.features.rmvpe import RMVPE_CENTS_OFFSET, compute_rmvpe_f0_from_salience

    salience = np.zeros((3, 360), np.float32)
    salience[0, 100] = 0.9  # a single bin: f0 = 10 * 2^(cents / 1200)
    salience[1, 200:203] = [0.5, 1.0, 0.5]  # symmetric around bin 201
    salience[2, 50] = 0.02  # below the 0.03 threshold -> unvoiced
    f0 = compute_rmvpe_f0_from_salience(salience)
    assert f0[0] == pytest.approx(10 * 2 ** ((20 * 100 + RMVPE_CENTS_OFFSET) / 1200), rel=1e-5)
    assert f0[1] == pytest.approx(10 * 2 ** ((20 * 201 + RMVPE_CENTS_OFFSET) / 1200), rel=1e-5)
    assert f0[2] == 0.0


@pytest.mark.slow
def test_rmvpe_full_architecture_runs_on_random_weights() -> None:
    from rvc_ray.features.rmvpe import RmvpePitchExtractor, build_rmvpe_network

    net = build_rmvpe_network()
    assert net.fc[1].in_features == 512 and net.fc[1].out_features == 360
    assert sum(p.numel() for p in net.parameters()) > 80_000_000  # rmvpe.pt is ~181 MB of fp16
    wav = (0.3 * np.sin(2 * np.pi * 200 * np.arange(4000) / 16000)).astype(np.float32)
    f0 = RmvpePitchExtractor(net, f0_min=50.0, f0_max=1100.0).compute_f0(wav)
    assert f0.shape == (expected_f0_frames(4000),) and f0.dtype == np.float32
    assert np.all((f0 == 0) | ((f0 >= 50) & (f0 <= 1100)))


def test_rmvpe_loading_roundtrip_and_clear_errors(tmp_path: Path) -> None:
    import torch

    from rvc_ray.features.rmvpe import build_rmvpe_network, load_rmvpe_network

    sizes = {"n_blocks": 1, "inter_layers": 1, "en_de_layers": 2, "en_out_channels": 2}
    net = build_rmvpe_network(**sizes)
    path = tmp_path / "rmvpe.pt"
    torch.save({k: v.half() for k, v in net.state_dict().items()}, path)  # the shipped rmvpe.pt is fp16
    loaded = load_rmvpe_network(path, network=build_rmvpe_network(**sizes))
    torch.testing.assert_close(loaded.state_dict()["fc.1.weight"], net.state_dict()["fc.1.weight"].half().float())

    bad = dict(net.state_dict())
    bad["fc.1.weight"] = torch.zeros(360, 100)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt.*fc\.1\.weight: file \(360, 100\) vs model \(360, 512\)"):
        load_rmvpe_network(tmp_path / "bad.pt", network=build_rmvpe_network(**sizes))
    del bad["cnn.bias"]
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"1 missing keys \['cnn\.bias'\]"):
        load_rmvpe_network(tmp_path / "bad.pt", network=build_rmvpe_network(**sizes))
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pt"):
        load_rmvpe_network(tmp_path / "corrupt.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_rmvpe_network(tmp_path / "missing.pt")


def _pitch_metrics(est: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """(median cents error, gross error rate > 50 cents, voicing accuracy) over aligned frames."""
    n = min(len(est), len(truth))
    est, truth = est[:n], truth[:n]
    both = (est > 0) & (truth > 0)
    cents = 1200.0 * np.abs(np.log2(est[both] / truth[both]))
    return float(np.median(cents)), float(np.mean(cents > 50.0)), float(np.mean((est > 0) == (truth > 0)))


# Measured on the demo corpus (first 4-5 s of spk0_00 / spk1_00): fcpe ~1.0 cents, 0 % gross, voicing 0.79-0.87;
# crepe-tiny 5.6-6.9 cents, 0 % gross, voicing 0.86-0.90. Thresholds leave a wide margin.
_THRESHOLDS = {"fcpe": (5.0, 0.05, 0.70), "crepe-tiny": (20.0, 0.05, 0.75)}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(_THRESHOLDS))
def test_pitch_accuracy_on_demo_corpus(method: str, demo_corpus_dir: Path, tiny_cfg) -> None:
    import soundfile as sf
    import soxr

    extractor = build_pitch_extractor(method, tiny_cfg.features)
    max_median, max_gross, min_voicing = _THRESHOLDS[method]
    for speaker in (0, 1):
        wav, sr = sf.read(demo_corpus_dir / f"spk{speaker}" / f"spk{speaker}_00.wav", dtype="float32")
        wav_16k = soxr.resample(wav, sr, 16000)[: 16000 * 4].astype(np.float32)
        truth = np.load(truth_f0_dir(demo_corpus_dir) / f"spk{speaker}" / f"spk{speaker}_00.f0.npy")
        f0 = extractor.compute_f0(wav_16k)
        assert f0.shape == (expected_f0_frames(len(wav_16k)),) and f0.dtype == np.float32
        median, gross, voicing = _pitch_metrics(f0, truth)
        assert median < max_median, f"{method} speaker {speaker}: median error {median:.1f} cents"
        assert gross < max_gross, f"{method} speaker {speaker}: gross error rate {gross:.3f}"
        assert voicing > min_voicing, f"{method} speaker {speaker}: voicing accuracy {voicing:.3f}"
