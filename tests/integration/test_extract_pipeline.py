"""Ray Data feature extraction end to end on a tiny segment table (preprocess contract), plus the index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rvc_ray.config import load_run_config
from rvc_ray.preprocess.shards import SEGMENT_SCHEMA

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SR = 16000  # tiny_cpu sample rate

# per row of the first extraction below: num_frames, split, sum of pitch_bins, sum of f0_hz, sum and sum of |x|
# of content, as the code before the speed work (#13) wrote them
FEATURES_BEFORE_THE_SPEED_WORK = {
    "0_00000_0000": (98, "train", 2646, 11787.107666015625, -72.88162203133106, 5059.809685759246),
    "0_00001_0000": (118, "val", 3546, 15356.48762512207, -87.75540339201689, 6061.996695736423),
    "0_00002_0000": (78, "train", 2653, 10946.608047485352, -58.0078123761341, 3965.951371391304),
    "1_00003_0000": (98, "val", 5882, 21557.069610595703, -72.88162742741406, 5099.064481416717),
    "1_00004_0000": (88, "train", 5893, 21143.756393432617, -65.44469948299229, 4539.984226210043),
    "mute_0_00": (298, "train", 298, 0.0, -221.61964020319283, 15102.350494781509),
    "mute_1_00": (298, "train", 298, 0.0, -221.61964020319283, 15102.350494781509),
}


def _write_segments(dataset_dir: Path, specs: list[tuple[int, float, float]]) -> list[str]:
    """Write ``dataset/segments/part-00000.parquet``: one harmonic segment per (speaker, seconds, f0)."""
    rng = np.random.default_rng(0)
    rows: dict[str, list] = {
        k: []
        for k in (
            "segment_id",
            "speaker_id",
            "speaker_name",
            "source_path",
            "source_index",
            "segment_index",
            "start_s",
            "duration_s",
            "sample_rate",
            "wav",
            "wav_16k",
        )
    }
    for i, (speaker, seconds, f0) in enumerate(specs):
        t = np.arange(int(seconds * SR)) / SR
        wav = (
            0.3 * np.sin(2 * np.pi * f0 * t) + 0.1 * np.sin(4 * np.pi * f0 * t) + 0.003 * rng.standard_normal(t.shape)
        ).astype(np.float32)
        sid = f"{speaker}_{i:05d}_0000"
        for key, value in (
            ("segment_id", sid),
            ("speaker_id", speaker),
            ("speaker_name", f"spk{speaker}"),
            ("source_path", f"/x/{sid}.wav"),
            ("source_index", i),
            ("segment_index", 0),
            ("start_s", 0.0),
            ("duration_s", seconds),
            ("sample_rate", SR),
            ("wav", wav),
            ("wav_16k", wav),
        ):
            rows[key].append(value)
    schema = SEGMENT_SCHEMA  # the preprocess stage's contract
    out = dataset_dir / "segments" / "part-00000.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pydict(rows, schema=schema), out)
    return rows["segment_id"]


def test_extract_then_resume_then_index(ray_cluster, tmp_path: Path) -> None:
    from rvc_ray.data.dataset import load_feature_table
    from rvc_ray.features.extract import run_extract
    from rvc_ray.features.index import load_index, run_index

    cfg = load_run_config(
        "tiny_cpu", ["features.f0_method=fcpe", "features.validation_fraction=0.3", "features.mute_rows_per_speaker=1"]
    )
    specs = [
        (0, 1.0, 120.0),
        (0, 1.2, 130.0),
        (0, 0.8, 140.0),
        (1, 1.0, 220.0),
        (1, 0.9, 240.0),
        (1, 0.01, 200.0),
    ]  # the last one is too short for one content frame -> a recorded failure
    ids = _write_segments(tmp_path / "dataset", specs)
    out = tmp_path / "features"

    result = run_extract(cfg, tmp_path / "dataset", out)
    assert result.num_failed == 1 and result.failures[0][0] == ids[-1]
    assert "content" in result.failures[0][1]
    assert result.num_segments == 5 + 2 and result.num_mute == 2
    assert result.num_val >= 2 and result.num_train + result.num_val == result.num_segments  # >=1 val per speaker
    assert not result.learned_content and "NO learned content" in result.content_encoder
    assert result.throughput["pitch"] > 0 and result.throughput["content"] > 0

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["content_encoder"]["kind"] == "random"
    assert manifest["content_encoder"]["learned_content"] is False
    assert manifest["failures"][0][0] == ids[-1]

    table = pa.concat_tables(pq.read_table(p) for p in sorted((out / "table").glob("part-*.parquet")))
    for row in table.to_pylist():
        frames = row["num_frames"]
        assert len(row["content"]) == frames * cfg.model.content_dim
        assert len(row["f0_hz"]) == len(row["pitch_bins"]) == frames
        assert len(row["wav"]) == frames * cfg.audio.hop_length and len(row["wav_16k"]) == frames * 160
        if row["is_mute"]:
            assert row["split"] == "train" and set(row["pitch_bins"]) == {1} and frames == 298
    # the same features as before the speed work (computed then with rvc_ray.features.pipeline at the commit
    # before 32a5159, and byte-identical to today's on the machine that recorded them); tolerances leave room
    # for another CPU's last bits only
    for row in table.to_pylist():
        frames, split, bins_sum, f0_sum, content_sum, content_abs = FEATURES_BEFORE_THE_SPEED_WORK[row["segment_id"]]
        content = np.asarray(row["content"], np.float64)
        assert (row["num_frames"], row["split"]) == (frames, split), row["segment_id"]
        assert abs(int(np.sum(row["pitch_bins"])) - bins_sum) <= 2, row["segment_id"]
        assert float(np.sum(np.asarray(row["f0_hz"], np.float64))) == pytest.approx(f0_sum, rel=1e-4, abs=1e-3)
        assert float(content.sum()) == pytest.approx(content_sum, rel=1e-4)
        assert float(np.abs(content).sum()) == pytest.approx(content_abs, rel=1e-4)
    assert set(table.column("segment_id").to_pylist()) == set(FEATURES_BEFORE_THE_SPEED_WORK)
    seg0 = next(r for r in table.to_pylist() if r["segment_id"] == ids[0])
    voiced = np.asarray(seg0["f0_hz"])[np.asarray(seg0["f0_hz"]) > 0]
    assert abs(np.median(voiced) - 120.0) < 6.0

    # the CPU default runs pitch and content in one actor pool; the two pools of the GPU layout write the same
    # table (same features, same hash: the layout is not part of what the features depend on)
    assert cfg.features.fused_stages
    separate = run_extract(cfg.model_copy(update={"features": cfg.features.model_copy(update={"stages": "separate"})}),
                           tmp_path / "dataset", tmp_path / "features_separate")  # fmt: skip
    assert separate.config_hash == result.config_hash and separate.failures == result.failures
    separate_table = pa.concat_tables(
        pq.read_table(p) for p in sorted((tmp_path / "features_separate" / "table").glob("part-*.parquet"))
    )
    by_id = {r["segment_id"]: r for r in separate_table.to_pylist()}
    assert set(by_id) == {r["segment_id"] for r in table.to_pylist()}
    for row in table.to_pylist():
        other = by_id[row["segment_id"]]
        for column in ("num_frames", "split", "f0_hz", "pitch_bins", "wav", "wav_16k"):
            assert other[column] == row[column], column
        np.testing.assert_allclose(other["content"], row["content"], rtol=0, atol=1e-6)

    # the training side reads it (data/dataset.py's own length checks)
    assert len(load_feature_table(out, "train", hop_length=cfg.audio.hop_length)) == result.num_train

    again = run_extract(cfg, tmp_path / "dataset", out)  # resume: only the failed segment is retried
    assert again.num_extracted == 0 and again.num_skipped == result.num_segments and again.num_failed == 1

    index_result = run_index(cfg, out, tmp_path / "index" / "demo.index")
    assert index_result.num_vectors > 0 and index_result.size_bytes > 0
    index = load_index(index_result.index_path)
    train_row = next(r for r in table.to_pylist() if r["split"] == "train" and not r["is_mute"])
    frame = np.asarray(train_row["content"], np.float32).reshape(-1, cfg.model.content_dim)[:1]
    dist, ids_found = index.search(frame, k=1)
    assert dist[0, 0] == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_array_equal(index.vectors[ids_found[0, 0]], frame[0])
