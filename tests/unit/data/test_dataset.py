"""Feature table -> items -> padded RVCBatch."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from rvc_ray.config import RunConfig
from rvc_ray.data.dataset import (
    FeatureTableError,
    TrainingItems,
    collate_items,
    load_feature_table,
    write_synthetic_feature_table,
)


def _simple_spectrogram(n_freq: int, hop: int):
    """A stand-in STFT with the real frame count (T // hop) so tests do not depend on the audio package."""

    def spectrogram(wav: torch.Tensor) -> torch.Tensor:
        frames = wav.shape[-1] // hop
        return wav[: frames * hop].reshape(frames, hop).abs().mean(-1).expand(n_freq, frames).clone()

    return spectrogram


@pytest.fixture
def table_dir(tmp_path: Path, tiny_cfg: RunConfig) -> Path:
    write_synthetic_feature_table(
        tmp_path,
        content_dim=tiny_cfg.model.content_dim,
        sample_rate=tiny_cfg.audio.sample_rate,
        frames=[40, 55, 70, 30, 90],
        splits=["train", "train", "train", "val", "train"],
    )
    return tmp_path


def _items(table_dir: Path, cfg: RunConfig, split: str = "train", max_frames: int = 900) -> TrainingItems:
    table = load_feature_table(table_dir, split, hop_length=cfg.audio.hop_length)
    spectrogram = _simple_spectrogram(cfg.audio.spec_channels, cfg.audio.hop_length)
    return TrainingItems(table, cfg.audio, max_frames=max_frames, spectrogram_fn=spectrogram)


def test_split_rows_are_separated(table_dir: Path, tiny_cfg: RunConfig) -> None:
    train = load_feature_table(table_dir, "train", hop_length=tiny_cfg.audio.hop_length)
    val = load_feature_table(table_dir, "val", hop_length=tiny_cfg.audio.hop_length)
    assert len(train) == 4 and len(val) == 1
    assert list(val.num_frames) == [30]
    assert train.content_dim == tiny_cfg.model.content_dim


def test_item_streams_are_aligned_and_truncated(table_dir: Path, tiny_cfg: RunConfig) -> None:
    items = _items(table_dir, tiny_cfg, max_frames=50)
    assert items.lengths == [40, 50, 50, 50]
    item = items[3]
    hop = tiny_cfg.audio.hop_length
    assert item.content.shape == (50, tiny_cfg.model.content_dim)
    assert item.spec.shape == (tiny_cfg.audio.spec_channels, 50)
    assert item.wav.shape == (50 * hop,)
    assert item.pitch_bins is not None and item.pitch_bins.dtype == torch.long and item.pitch_bins.shape == (50,)
    assert item.f0_hz is not None and item.f0_hz.shape == (50,)
    assert 1 <= int(item.pitch_bins.min()) and int(item.pitch_bins.max()) <= 255


def test_collate_pads_and_keeps_order(table_dir: Path, tiny_cfg: RunConfig) -> None:
    items = _items(table_dir, tiny_cfg)
    batch = items.batch([1, 0])
    hop = tiny_cfg.audio.hop_length
    assert batch.content.shape == (2, 55, tiny_cfg.model.content_dim)
    assert batch.spec.shape == (2, tiny_cfg.audio.spec_channels, 55)
    assert batch.wav.shape == (2, 1, 55 * hop)
    assert batch.content_lengths.tolist() == [55, 40]
    assert batch.spec_lengths.tolist() == [55, 40]
    assert batch.wav_lengths.tolist() == [55 * hop, 40 * hop]
    assert batch.speaker_id.tolist() == [1, 0]
    assert torch.all(batch.content[1, 40:] == 0) and torch.all(batch.wav[1, 0, 40 * hop :] == 0)
    torch.testing.assert_close(batch.content[1, :40], items[0].content)


def test_without_f0_pitch_streams_are_none(table_dir: Path, tiny_cfg: RunConfig) -> None:
    table = load_feature_table(table_dir, "train", hop_length=tiny_cfg.audio.hop_length)
    spectrogram = _simple_spectrogram(tiny_cfg.audio.spec_channels, tiny_cfg.audio.hop_length)
    items = TrainingItems(table, tiny_cfg.audio, max_frames=900, use_f0=False, spectrogram_fn=spectrogram)
    batch = collate_items([items[0], items[1]])
    assert batch.pitch_bins is None and batch.f0_hz is None


def test_missing_table_names_the_directory(tmp_path: Path) -> None:
    with pytest.raises(FeatureTableError, match=r"no feature table in .*table"):
        load_feature_table(tmp_path, "train", hop_length=160)


def test_inconsistent_row_is_named(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    path = write_synthetic_feature_table(
        tmp_path, content_dim=tiny_cfg.model.content_dim, sample_rate=tiny_cfg.audio.sample_rate, frames=[20, 30]
    )
    table = pq.read_table(path)
    frames = table.column("num_frames").to_pylist()
    frames[1] = 31
    import pyarrow as pa

    table = table.set_column(table.schema.get_field_index("num_frames"), "num_frames", pa.array(frames, pa.int32()))
    pq.write_table(table, path)
    with pytest.raises(FeatureTableError, match=r"segment '1_00001_0000': column 'content' has"):
        load_feature_table(tmp_path, "train", hop_length=tiny_cfg.audio.hop_length)


def test_missing_column_is_named(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    path = write_synthetic_feature_table(
        tmp_path, content_dim=tiny_cfg.model.content_dim, sample_rate=tiny_cfg.audio.sample_rate, frames=[20]
    )
    pq.write_table(pq.read_table(path).drop_columns(["f0_hz"]), path)
    with pytest.raises(FeatureTableError, match=r"lacks column\(s\) \['f0_hz'\]"):
        load_feature_table(tmp_path, "train", hop_length=tiny_cfg.audio.hop_length)


def test_default_spectrogram_matches_frame_count(table_dir: Path, tiny_cfg: RunConfig) -> None:
    pytest.importorskip("rvc_ray.audio.spectral")
    table = load_feature_table(table_dir, "train", hop_length=tiny_cfg.audio.hop_length)
    item = TrainingItems(table, tiny_cfg.audio, max_frames=900)[0]
    assert item.spec.shape == (tiny_cfg.audio.spec_channels, 40)
    assert torch.isfinite(item.spec).all() and float(item.spec.min()) > 0
