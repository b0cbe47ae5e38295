"""RVC's silence slicer and the 3.7 s / 0.3 s segmentation: exact boundaries on hand-built signals."""

from __future__ import annotations

import numpy as np
import pytest

from rvc_ray.audio.slicing import SlicerParams, compute_rms_frames, compute_segment_bounds, compute_slice_bounds

SR = 16000


def _tone(seconds: float, amplitude: float = 0.1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * SR))) / SR
    return amplitude * np.sin(2 * np.pi * freq * t)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * SR)))


def test_slicer_params_follow_rvc_arithmetic() -> None:
    p40 = SlicerParams.from_ms(40000)
    assert (p40.hop, p40.window, p40.min_length, p40.min_interval, p40.max_sil_kept) == (600, 2400, 100, 27, 33)
    assert p40.threshold == pytest.approx(0.00794, abs=1e-5)
    p16 = SlicerParams.from_ms(SR)
    assert (p16.hop, p16.window) == (240, 960)
    with pytest.raises(ValueError, match="min_length_ms >= min_interval_ms"):
        SlicerParams.from_ms(SR, min_length_ms=300, min_interval_ms=400)


def test_rms_frames_match_librosa_definition() -> None:
    # librosa.feature.rms(center=True, pad_mode="constant"): zero-pad window//2, frame, sqrt(mean(x^2))
    rng = np.random.default_rng(0)
    x = rng.standard_normal(12345) * 0.1
    ours = compute_rms_frames(x, 960, 240)
    padded = np.pad(x, (480, 480))
    frames = np.lib.stride_tricks.sliding_window_view(padded, 960)[::240]
    ref = np.sqrt(np.mean(frames**2, axis=1))
    assert ours.shape == ref.shape == (1 + 12345 // 240,)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


def test_middle_and_trailing_silence_cut_where_rvc_cuts() -> None:
    # 3 s tone | 1 s silence | 3 s tone | 2 s silence, hop 240 samples (15 ms), window 960.
    x = np.concatenate([_tone(3.0), _silence(1.0), _tone(3.0), _silence(2.0)])
    bounds = compute_slice_bounds(x, SlicerParams.from_ms(SR))
    # middle silence: frames 202..264 (63 frames <= 2*max_sil_kept) -> tag (202, 232);
    # trailing silence from frame 469 -> tag (469, end). Chunk = [tag_k.end, tag_k+1.start) * hop.
    assert bounds == [(0, 202 * 240), (232 * 240, 469 * 240)]


def test_leading_silence_is_trimmed_to_max_sil_kept() -> None:
    x = np.concatenate([_silence(15360 / SR), _tone(3.0)])  # tone from sample 15360: frame 63 is the first loud one
    bounds = compute_slice_bounds(x, SlicerParams.from_ms(SR))
    # leading silence (i=63 > max_sil_kept=33): tag (0, pos_r), pos_r = argmin over frames [30, 63] = 30
    assert bounds == [(30 * 240, x.shape[0])]


def test_short_pause_is_not_cut_and_all_silence_yields_nothing() -> None:
    params = SlicerParams.from_ms(SR)
    x = np.concatenate([_tone(2.0), _silence(0.2), _tone(2.0)])  # 0.2 s < min_interval 0.4 s
    assert compute_slice_bounds(x, params) == [(0, x.shape[0])]
    assert compute_slice_bounds(_silence(3.0), params) == []
    assert compute_slice_bounds(np.zeros(0), params) == []


def test_segment_bounds_stride_and_remainder_rule() -> None:
    sr = 40000
    # 10 s chunk: full 3.7 s segments at 0 and 3.4 s, then the 3.2 s remainder from 6.8 s
    assert compute_segment_bounds(400000, sr) == [(0, 148000), (136000, 284000), (272000, 400000)]
    # exactly tail (4.0 s): not more than tail -> one 4.0 s remainder
    assert compute_segment_bounds(160000, sr) == [(0, 160000)]
    # 4.1 s: one full segment plus a 0.7 s remainder starting at 3.4 s
    assert compute_segment_bounds(164000, sr) == [(0, 148000), (136000, 164000)]
    # short chunk: the whole chunk is the (short) remainder; callers drop it if below min_segment_s
    assert compute_segment_bounds(8000, sr) == [(0, 8000)]
    assert compute_segment_bounds(0, sr) == []


def test_segment_bounds_at_odd_rates_and_custom_lengths() -> None:
    bounds = compute_segment_bounds(44100 * 20, 44100)
    starts = [s for s, _ in bounds]
    assert starts == [int(round(44100 * 3.4 * i)) for i in range(len(bounds))]
    assert all(e - s == 163170 for s, e in bounds[:-1])
    assert bounds[-1][1] == 44100 * 20 and bounds[-1][1] - bounds[-1][0] <= 4.0 * 44100
    assert compute_segment_bounds(100, 10, segment_s=3.0, overlap_s=0.0)[:2] == [(0, 30), (30, 60)]
    with pytest.raises(ValueError, match="overlap_s"):
        compute_segment_bounds(100, 10, segment_s=1.0, overlap_s=1.0)
