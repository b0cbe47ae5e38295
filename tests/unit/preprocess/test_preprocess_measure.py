"""Readiness figures measured by the main pass (one decode) equal those of the readiness pass's own decode."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rvc_ray.config import RunConfig
from rvc_ray.preprocess import run_preprocess
from rvc_ray.preprocess.discovery import SourceFile
from rvc_ray.preprocess.inspection import inspect_file, inspect_header, measurable_while_processing
from rvc_ray.preprocess.shards import iter_file_tables
from tests.unit.preprocess.test_preprocess_report import phrase


def _measured_in_main_pass(source: SourceFile, cfg: RunConfig) -> dict:
    tables = list(iter_file_tables(source, cfg.preprocess, cfg.audio.sample_rate, measure=True))
    outcome = json.loads(tables[-1].column("file_outcome")[0].as_py())
    return outcome["readiness"]


@pytest.mark.parametrize(("rate", "subtype", "channels"), [(16000, "PCM_16", 2), (22050, "PCM_24", 1)])
def test_main_pass_figures_equal_the_readiness_pass(
    tmp_path: Path, tiny_cfg: RunConfig, rate: int, subtype: str, channels: int
) -> None:
    pp = tiny_cfg.preprocess.model_copy(update={"block_duration_s": 2.0})  # several blocks, a short last one
    cfg = tiny_cfg.model_copy(update={"preprocess": pp})
    mono = phrase(rate, [(1.5, 0.8), (2.2, 1.1), (0.9, 0.3)])
    mono[200:260] = 1.0  # some clipping
    audio = np.stack([mono, 0.5 * mono[::-1]], axis=1) if channels == 2 else mono
    path = tmp_path / "a.wav"
    sf.write(path, audio, rate, subtype=subtype)
    source = SourceFile(path, 0, "s", 3)
    header = inspect_header(source, pp)
    assert measurable_while_processing(header) and header.clipping_ratio is None and header.usable_s == 0.0
    full = inspect_file(source, pp)
    figures = _measured_in_main_pass(source, cfg)
    assert replace(header, **{**figures, "warnings": tuple(figures["warnings"])}) == full
    assert full.clipping_ratio > 0 and 0 < full.usable_s < full.duration_s


def test_only_integer_pcm_wav_is_measured_while_processing(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    audio = phrase(16000, [(1.0, 0.2)])
    for name, subtype in (("float.wav", "FLOAT"), ("pcm.flac", "PCM_16"), ("u8.wav", "PCM_U8")):
        sf.write(tmp_path / name, audio, 16000, subtype=subtype)
    measurable = {
        name: measurable_while_processing(inspect_header(SourceFile(tmp_path / name, 0, "s", 0), tiny_cfg.preprocess))
        for name in ("float.wav", "pcm.flac", "u8.wav")
    }
    assert measurable == {"float.wav": False, "pcm.flac": False, "u8.wav": True}  # NaN/inf or decoder errors possible
    deferred = {
        name: inspect_file(SourceFile(tmp_path / name, 0, "s", 0), tiny_cfg.preprocess, header_only_if_measurable=True)
        for name in ("float.wav", "pcm.flac", "u8.wav")
    }
    assert {name: i.clipping_ratio is None for name, i in deferred.items()} == measurable  # header only: not decoded


def test_insufficient_audio_found_while_processing_is_warned_then(
    tmp_path: Path, tiny_cfg: RunConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    """40 s by the header (the readiness report's upper bound: 'warn'), 3 s of it sound: 'insufficient' at the end."""
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "quiet.wav", phrase(16000, [(3.0, 37.0)]), 16000, subtype="PCM_16")
    result = run_preprocess(tiny_cfg, [folder], tmp_path / "ds", use_ray=False)
    printed = capsys.readouterr().out
    assert "readiness report: verdict WARN" in printed
    assert "verdict 'insufficient'" in printed and "measured while processing" in printed
    report = json.loads(Path(result.report_path).read_text())
    assert result.verdict == report["verdict"] == "insufficient"
    (entry,) = report["files"]
    assert entry["usable_s"] == pytest.approx(3.0, abs=0.6) and entry["silence_ratio"] > 0.8
    assert "readiness" not in entry["processing"]  # moved into the file's figures
