"""The 48 Hz zero-phase Butterworth high-pass and RVC's alpha-mix normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from rvc_ray.audio.filters import (
    apply_highpass,
    compute_highpass_gain_db,
    design_highpass,
    normalize_segment,
    segment_peak,
)

SR = 16000


def _measured_gain_db(freq: float, sample_rate: int = SR) -> float:
    t = np.arange(4 * sample_rate) / sample_rate
    x = np.sin(2 * np.pi * freq * t)
    y = apply_highpass(x, sample_rate)
    middle = slice(sample_rate, 3 * sample_rate)  # away from the edges
    return float(20 * np.log10(np.sqrt(np.mean(y[middle] ** 2)) / np.sqrt(np.mean(x[middle] ** 2))))


def test_single_pass_design_is_3db_down_at_48hz() -> None:
    single = compute_highpass_gain_db(np.array([20.0, 48.0, 100.0]), SR, zero_phase=False)
    assert single[1] == pytest.approx(-3.01, abs=0.02)
    assert single[0] == pytest.approx(-38.0, abs=0.5)  # 10 * log10(1 + (48/20)^10)
    assert single[2] == pytest.approx(0.0, abs=0.01)


@pytest.mark.parametrize(
    ("freq", "expected_db", "tolerance"),
    [(48.0, -6.02, 0.1), (100.0, -0.0056, 0.02), (1000.0, 0.0, 0.01)],
)
def test_zero_phase_response_doubles_the_attenuation(freq: float, expected_db: float, tolerance: float) -> None:
    assert _measured_gain_db(freq) == pytest.approx(expected_db, abs=tolerance)
    assert compute_highpass_gain_db(np.array([freq]), SR)[0] == pytest.approx(expected_db, abs=tolerance)


def test_20hz_is_strongly_rejected_at_every_rate() -> None:
    for rate in (16000, 44100, 48000):
        assert _measured_gain_db(20.0, rate) < -60.0  # theory: about -76 dB for the zero-phase pair


def test_zero_phase_keeps_waveform_aligned() -> None:
    t = np.arange(2 * SR) / SR
    x = np.sin(2 * np.pi * 300 * t)
    y = apply_highpass(x, SR)
    middle = slice(SR // 2, 3 * SR // 2)
    assert np.max(np.abs(y[middle] - x[middle])) < 1e-3  # no phase shift, no delay


def test_highpass_edge_cases() -> None:
    assert design_highpass(SR).shape == (3, 6)  # order 5 -> 3 second-order sections
    with pytest.raises(ValueError, match="Nyquist"):
        design_highpass(SR, cutoff_hz=9000.0)
    assert apply_highpass(np.zeros(5), SR).shape == (5,)  # shorter than scipy's default padding
    with pytest.raises(ValueError, match="mono"):
        apply_highpass(np.zeros((4, 2)), SR)


def test_alpha_mix_normalisation_numbers() -> None:
    x = np.array([0.0, 0.5, -2.0, 1.0])
    y = normalize_segment(x, max_amplitude=0.9, alpha=0.75)
    np.testing.assert_allclose(y, x / 2.0 * 0.675 + 0.25 * x)
    assert segment_peak(y) == pytest.approx(0.675 + 0.5)
    quiet = np.array([0.01, -0.02])
    assert segment_peak(normalize_segment(quiet)) == pytest.approx(0.675 + 0.25 * 0.02)


def test_normalisation_rejects_zero_and_nonfinite_peaks() -> None:
    assert segment_peak(np.array([0.1, np.nan])) != segment_peak(np.array([0.1, np.nan]))  # nan
    assert segment_peak(np.zeros(0)) == 0.0
    with pytest.raises(ValueError, match="peak"):
        normalize_segment(np.zeros(10))
    with pytest.raises(ValueError, match="peak"):
        normalize_segment(np.array([np.inf, 0.0]))
