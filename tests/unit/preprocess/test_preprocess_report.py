"""Preprocessing without Ray: input discovery, the readiness report, bad files, segments, blockwise long files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from rvc_ray.config import RunConfig, load_run_config
from rvc_ray.preprocess import discover_inputs, run_preprocess
from rvc_ray.preprocess.discovery import SourceFile
from rvc_ray.preprocess.inspection import inspect_file
from rvc_ray.preprocess.report import compute_verdict, format_report_text
from rvc_ray.preprocess.segments import FileOutcome, iter_file_segments

EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


def phrase(sample_rate: int, pattern: list[tuple[float, float]], freq: float = 220.0) -> np.ndarray:
    """Alternating (tone seconds, silence seconds) pairs: a crude utterance with pauses."""
    parts = []
    for tone_s, silence_s in pattern:
        t = np.arange(int(round(tone_s * sample_rate))) / sample_rate
        parts.append(0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t)))
        parts.append(np.zeros(int(round(silence_s * sample_rate))))
    return np.concatenate(parts)


def make_bad_and_odd_files(folder: Path) -> dict[str, Path]:
    """The hand-made files of the acceptance criteria, in one speaker folder."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        name: folder / name
        for name in (
            "truncated.wav",
            "notes.wav",
            "silence.wav",
            "nan.wav",
            "u8.wav",
            "pcm24.wav",
            "stereo44.wav",
            "short.wav",
            "empty.wav",
            "zero.wav",
            "loud.wav",
            "readme.txt",
        )
    }
    two_chunks = [(2.0, 1.0), (2.0, 0.5)]
    sf.write(paths["truncated.wav"], phrase(16000, two_chunks), 16000, subtype="PCM_16")
    data = paths["truncated.wav"].read_bytes()
    paths["truncated.wav"].write_bytes(data[: len(data) * 2 // 3])
    paths["notes.wav"].write_text("lyrics, not audio\n" * 20)
    sf.write(paths["silence.wav"], np.zeros(3 * 16000), 16000, subtype="PCM_16")
    nan_audio = phrase(16000, two_chunks).astype(np.float32)
    nan_audio[1000:1010] = np.nan
    sf.write(paths["nan.wav"], nan_audio, 16000, subtype="FLOAT")
    sf.write(paths["u8.wav"], phrase(22050, two_chunks), 22050, subtype="PCM_U8")
    sf.write(paths["pcm24.wav"], phrase(48000, two_chunks), 48000, subtype="PCM_24")
    mono = phrase(44100, two_chunks)
    sf.write(paths["stereo44.wav"], np.stack([mono, 0.5 * mono], axis=1), 44100, subtype="PCM_16")
    sf.write(paths["short.wav"], phrase(16000, [(0.2, 0.0)]), 16000, subtype="PCM_16")
    paths["empty.wav"].write_bytes(b"")
    sf.write(paths["zero.wav"], np.zeros(0), 16000, subtype="PCM_16")
    sf.write(paths["loud.wav"], 10.0 * phrase(16000, two_chunks), 16000, subtype="FLOAT")  # peak 3.9 > 2.5
    paths["readme.txt"].write_text("recorded with a phone\n")
    return paths


@pytest.fixture
def cfg(tiny_cfg: RunConfig) -> RunConfig:
    return tiny_cfg


def test_discovery_layouts(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for sub in ("7", "alice", "bob", "0"):
        (root / sub / "deep").mkdir(parents=True)
        sf.write(root / sub / "deep" / "a.wav", np.zeros(100), 8000)
    sf.write(root / "loose.wav", np.zeros(100), 8000)
    (root / "docs").mkdir()
    (root / "docs" / "notes.md").write_text("x")
    found = discover_inputs([root], EXTENSIONS)
    assert [(s.speaker_id, s.name) for s in found.speakers] == [(0, "0"), (1, "alice"), (2, "bob"), (7, "7")]
    assert found.speakers[0].assigned_by == "files in the input root merged with folder '0'"
    assert found.speakers[1].assigned_by == "sorted folder order"
    assert [f.path.name for f in found.files if f.speaker_id == 0] == ["loose.wav", "a.wav"]
    assert [f.source_index for f in found.files] == list(range(5))
    assert [s.path.name for s in found.skipped] == ["notes.md"]
    assert "not audio" in found.skipped[0].reason

    several = discover_inputs([root / "bob", root / "alice"], EXTENSIONS)
    assert [(s.speaker_id, s.name, s.assigned_by) for s in several.speakers] == [
        (0, "bob", "input folder order"),
        (1, "alice", "input folder order"),
    ]
    flat = tmp_path / "carol"
    flat.mkdir()
    sf.write(flat / "b.wav", np.zeros(100), 8000)
    single = discover_inputs([flat], EXTENSIONS)
    assert [(s.speaker_id, s.name, s.assigned_by) for s in single.speakers] == [(0, "carol", "single input folder")]
    # one folder whose only audio sits in a sub-folder: that sub-folder is the (one) speaker
    assert [s.name for s in discover_inputs([root / "alice"], EXTENSIONS).speakers] == ["deep"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_inputs([tmp_path / "missing"], EXTENSIONS)
    with pytest.raises(NotADirectoryError, match="is a file"):
        discover_inputs([root / "loose.wav"], EXTENSIONS)
    with pytest.raises(ValueError, match="twice"):
        discover_inputs([root / "bob", root / "bob"], EXTENSIONS)


def test_bad_files_get_specific_reasons(tmp_path: Path, cfg: RunConfig) -> None:
    paths = make_bad_and_odd_files(tmp_path / "spk")
    reasons = {}
    for i, name in enumerate(sorted(paths)):
        if name.endswith(".txt"):
            continue
        result = inspect_file(SourceFile(paths[name], 0, "spk", i), cfg.preprocess)
        reasons[name] = result.bad_reason
    assert reasons["truncated.wav"].startswith("truncated: the WAV header declares")
    assert "plain text" in reasons["notes.wav"]
    assert reasons["nan.wav"].startswith("non-finite samples: 10 NaN/inf values, the first at 0.062 s")
    assert reasons["short.wav"].startswith("too short: 0.200 s < preprocess.min_file_duration_s=0.5")
    assert "empty file (0 bytes)" in reasons["empty.wav"]
    assert reasons["zero.wav"].startswith("zero-length")
    for ok in ("silence.wav", "u8.wav", "pcm24.wav", "stereo44.wav", "loud.wav"):
        assert reasons[ok] is None, ok


def test_inspection_measures_clipping_silence_and_snr(tmp_path: Path, cfg: RunConfig) -> None:
    rate = 16000
    clean = phrase(rate, [(2.0, 2.0)])
    rng = np.random.default_rng(0)
    noisy = clean + 0.003 * rng.standard_normal(clean.shape)  # ~ 0.2 / 0.003 -> about 33 dB
    clipped = np.clip(clean * 4, -1.0, 1.0)
    for name, audio in (("clean", clean), ("noisy", noisy), ("clipped", clipped)):
        sf.write(tmp_path / f"{name}.wav", audio, rate, subtype="FLOAT")
    get = {
        n: inspect_file(SourceFile(tmp_path / f"{n}.wav", 0, "s", 0), cfg.preprocess)
        for n in ("clean", "noisy", "clipped")
    }
    assert get["clean"].silence_ratio == pytest.approx(0.5, abs=0.02)
    assert get["clean"].usable_s == pytest.approx(2.0, abs=0.05)  # the 2 s pause is cut
    assert get["clean"].snr_db == 99.0  # digital silence between phrases
    assert 25.0 < get["noisy"].snr_db < 40.0
    assert get["clipped"].clipping_ratio > 0.1 and any("clipping" in w for w in get["clipped"].warnings)
    assert get["clean"].clipping_ratio == 0.0


def test_verdict_thresholds(cfg: RunConfig) -> None:
    pp = cfg.preprocess  # tiny preset: min 0.5 min, warn below 1.0 min
    assert compute_verdict(60.0, pp) == "ok"
    assert compute_verdict(45.0, pp) == "warn"
    assert compute_verdict(29.9, pp) == "insufficient"


def test_local_run_reports_bad_files_and_writes_the_contract(tmp_path: Path, cfg: RunConfig) -> None:
    paths = make_bad_and_odd_files(tmp_path / "in" / "spk")
    result = run_preprocess(cfg, [tmp_path / "in"], tmp_path / "ds", use_ray=False)
    bad = {Path(b.path).name: b.reason for b in result.bad_files}
    assert set(bad) == {"truncated.wav", "notes.wav", "nan.wav", "short.wav", "empty.wav", "zero.wav"}
    report = json.loads(result.report_path.read_text())
    assert report["stage"] == "final" and report["verdict"] == result.verdict == "insufficient"
    assert [s["path"] for s in report["skipped_files"]] == [str(paths["readme.txt"].resolve())]
    no_segments = {Path(f["path"]).name: f["reason"] for f in report["files_without_segments"]}
    assert "silent" in no_segments["silence.wav"]
    assert "peak_above_max" in no_segments["loud.wav"]
    assert report["totals"]["dropped_segments"]["peak_above_max"] == 2
    text = (tmp_path / "ds" / "report.txt").read_text()
    assert "truncated" in text and "readme.txt" in text and "verdict INSUFFICIENT" in text

    table = pq.read_table(tmp_path / "ds" / "segments")
    assert table.schema.field("speaker_id").type == "int32" and table.schema.field("wav").type.value_type == "float"
    rows = table.select(["segment_id", "source_path", "start_s", "duration_s", "sample_rate"]).to_pylist()
    by_file: dict[str, list[dict]] = {}
    for row in rows:
        by_file.setdefault(Path(row["source_path"]).name, []).append(row)
    assert sorted(by_file) == ["pcm24.wav", "stereo44.wav", "u8.wav"]
    for name, segs in by_file.items():
        # two 2 s tones separated by 1 s of silence: two chunks, each one (remainder) segment
        assert len(segs) == 2, name
        assert segs[0]["start_s"] == 0.0
        assert 2.0 <= segs[0]["duration_s"] <= 2.5 and 2.0 <= segs[1]["duration_s"] <= 2.7  # + kept silence
        assert 2.4 <= segs[1]["start_s"] <= 3.0
        assert segs[0]["segment_id"].endswith("_0000") and segs[1]["segment_id"].endswith("_0001")
    wavs = table.column("wav").to_pylist()
    wavs_16k = table.column("wav_16k").to_pylist()
    for row, wav, wav16 in zip(rows, wavs, wavs_16k, strict=True):
        assert row["sample_rate"] == cfg.audio.sample_rate
        assert len(wav) == round(row["duration_s"] * cfg.audio.sample_rate)
        assert len(wav16) == round(row["duration_s"] * 16000)
        assert 0.6 < max(abs(v) for v in wav) < 0.8  # alpha mix: 0.675 + 0.25 * peak(0.3 * 1.3)


def _segments(path: Path, cfg: RunConfig, block_s: float) -> tuple[list, FileOutcome]:
    pp = cfg.preprocess.model_copy(update={"block_duration_s": block_s})
    outcome = FileOutcome()
    return list(iter_file_segments(path, pp, cfg.audio.sample_rate, outcome)), outcome


def test_blockwise_reading_gives_the_whole_file_result(tmp_path: Path, cfg: RunConfig) -> None:
    rate = 16000
    rng = np.random.default_rng(1)
    pattern = [(float(rng.uniform(0.8, 7.0)), float(rng.uniform(0.1, 1.2))) for _ in range(14)]
    base = phrase(rate, pattern)
    audio = base + 1e-4 * rng.standard_normal(base.shape)  # -80 dB floor: no ties in the silences
    path = tmp_path / "long.wav"
    sf.write(path, audio, rate, subtype="FLOAT")
    whole, whole_outcome = _segments(path, cfg, 1000.0)
    blocks, block_outcome = _segments(path, cfg, 11.0)
    assert [(s.start_sample, s.num_source_samples) for s in blocks] == [
        (s.start_sample, s.num_source_samples) for s in whole
    ]
    for a, b in zip(blocks, whole, strict=True):
        np.testing.assert_allclose(a.wav, b.wav, atol=1e-5)
    assert block_outcome.max_buffer_samples <= 3 * 11 * rate
    assert whole_outcome.max_buffer_samples == audio.shape[0]


def test_unbroken_sound_longer_than_a_block_is_split_without_loss(tmp_path: Path, cfg: RunConfig) -> None:
    rate = 16000
    audio = phrase(rate, [(40.0, 0.0)])
    path = tmp_path / "drone.wav"
    sf.write(path, audio, rate, subtype="FLOAT")
    whole, _ = _segments(path, cfg, 1000.0)
    blocks, outcome = _segments(path, cfg, 11.0)
    assert outcome.max_buffer_samples <= 3 * 11 * rate
    whole_starts = [s.start_sample for s in whole]
    block_starts = [s.start_sample for s in blocks]
    assert len(block_starts) == len(whole_starts)
    assert max(abs(a - b) for a, b in zip(block_starts, whole_starts, strict=True)) <= 1  # same grid within a sample
    assert blocks[-1].start_sample + blocks[-1].num_source_samples == audio.shape[0]
    assert [s.segment_index for s in blocks] == list(range(len(blocks)))


def test_report_text_lists_everything() -> None:
    report = {
        "stage": "readiness",
        "verdict": "warn",
        "thresholds": {"min_usable_minutes": 10, "warn_usable_minutes": 30},
        "speakers": [
            {
                "speaker_id": 0,
                "name": "alice",
                "num_files": 2,
                "num_bad_files": 1,
                "total_s": 900.0,
                "usable_s": 700.0,
                "clipping_ratio": 0.0,
                "silence_ratio": 0.2,
                "snr_db": 40.0,
                "sample_rates": [44100],
                "verdict": "warn",
            },
        ],
        "totals": {"num_files": 2, "total_s": 900.0, "usable_s": 700.0},
        "bad_files": [{"path": "/x/bad.wav", "reason": "truncated: ..."}],
        "skipped_files": [{"path": "/x/notes.txt", "reason": "not audio"}],
        "files": [{"path": "/x/a.wav", "warnings": ["clipping: 1%"]}],
    }
    text = format_report_text(report)
    for needle in ("verdict WARN", "alice", "700.0s", "/x/bad.wav: truncated", "/x/notes.txt", "clipping: 1%"):
        assert needle in text


def test_rerun_is_a_noop_and_config_change_redoes(tmp_path: Path, cfg: RunConfig) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "a.wav", phrase(16000, [(2.0, 1.0), (3.0, 0.5)]), 16000, subtype="PCM_16")
    first = run_preprocess(cfg, [folder], tmp_path / "ds", use_ray=False)
    shard = tmp_path / "ds" / "segments" / "part-00000-00000.parquet"  # group 0, shard 0
    content = shard.read_bytes()
    again = run_preprocess(cfg, [folder], tmp_path / "ds", use_ray=False)
    assert again.reused and again.num_segments == first.num_segments
    forced = run_preprocess(cfg, [folder], tmp_path / "ds", use_ray=False, force=True)
    assert not forced.reused and shard.read_bytes() == content  # byte-identical
    changed = load_run_config("tiny_cpu", ["preprocess.normalize_alpha=0.5"])
    redone = run_preprocess(changed, [folder], tmp_path / "ds", use_ray=False)
    assert not redone.reused and shard.read_bytes() != content


def test_groups_per_task_amortises_task_start_without_a_long_tail() -> None:
    from rvc_ray.preprocess.pipeline import MAX_GROUPS_PER_TASK, groups_per_task

    assert groups_per_task(10, 4) == 1  # a 10-minute corpus: one group per task
    assert groups_per_task(40, 4) == 2  # 40 minutes: 20 tasks, 5 per slot
    assert groups_per_task(10_000, 4) == MAX_GROUPS_PER_TASK
    assert groups_per_task(3, 64) == 1
    with pytest.raises(ValueError, match="0 groups"):
        groups_per_task(0, 4)
    with pytest.raises(ValueError, match="0 slots"):
        groups_per_task(4, 0)


def test_task_resources_refuse_what_no_node_can_hold(cfg: RunConfig) -> None:
    from rvc_ray.errors import InputError
    from rvc_ray.preprocess.pipeline import task_resources

    nodes = [
        {"Alive": True, "Resources": {"CPU": 4.0, "memory": 8 * 2**30}},
        {"Alive": False, "Resources": {"CPU": 64.0, "memory": 512 * 2**30}},  # a dead node counts for nothing
    ]
    assert task_resources(cfg, nodes) == {"num_cpus": 1.0, "memory": 2**30}
    big_cpu = cfg.model_copy(update={"preprocess": cfg.preprocess.model_copy(update={"cpus_per_task": 8.0})})
    with pytest.raises(InputError, match=r"cpus_per_task=8.0 is more than the largest node has \(4 CPUs\)"):
        task_resources(big_cpu, nodes)
    big_memory = cfg.model_copy(update={"preprocess": cfg.preprocess.model_copy(update={"memory_gb_per_task": 16.0})})
    with pytest.raises(InputError, match=r"memory_gb_per_task=16 is more than the largest node's Ray memory \(8.0 GiB\)"):
        task_resources(big_memory, nodes)
