"""The feature table of the extraction stage, as training items and padded :class:`RVCBatch` es.

Data path (chosen for simplicity and robustness): every training worker reads the whole
``features/table/*.parquet`` (it is small: ~1 MB per 3.7 s segment at 768-d content) and its
:class:`~rvc_ray.data.sampler.DistributedBucketSampler` picks that worker's rows. No Ray Data
pipeline, so no Data + Train resource deadlock on small clusters (docs/ray-pitfalls.md §1), and the per-step
split across workers is exact and reproducible.

Each item follows RVC's ``TextAudioLoaderMultiNSFsid`` (docs/rvc-reference.md §6.1): content features already at
100 Hz, truncated to ``data.max_frames``; the linear spectrogram is computed from the item's own
waveform (never from a padded batch, so an item's tensors do not depend on its batch mates); every
stream is cut to the shorter of the content and spectrogram frame counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rvc_ray.config import AudioConfig
from rvc_ray.errors import InputError
from rvc_ray.features.extract import FEATURE_TABLE_COLUMNS

if TYPE_CHECKING:
    import pyarrow as pa
    from torch import Tensor

    from rvc_ray.data.batch import RVCBatch

__all__ = [
    "FeatureItem",
    "FeatureTable",
    "FeatureTableError",
    "TrainingItems",
    "collate_items",
    "load_feature_table",
    "write_synthetic_feature_table",
]

# Every feature-table column training reads (all but the 16 kHz reference waveform).
REQUIRED_COLUMNS = tuple(name for name in FEATURE_TABLE_COLUMNS if name != "wav_16k")
_LIST_COLUMNS = ("content", "f0_hz", "pitch_bins", "wav")


class FeatureTableError(InputError):
    """A feature table that is missing, empty or inconsistent with the run configuration."""


@dataclass(frozen=True)
class _Ragged:
    """A list<...> column as one flat numpy array plus row offsets (zero-copy views per row)."""

    values: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_column(cls, column: pa.ChunkedArray) -> _Ragged:
        import pyarrow.compute as pc

        combined = column.combine_chunks()
        lengths = pc.list_value_length(combined).fill_null(0).to_numpy(zero_copy_only=False)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = pc.list_flatten(combined).to_numpy(zero_copy_only=False)
        return cls(values=values, offsets=offsets)

    def row(self, index: int) -> np.ndarray:
        return self.values[self.offsets[index] : self.offsets[index + 1]]

    def row_length(self, index: int) -> int:
        return int(self.offsets[index + 1] - self.offsets[index])


@dataclass(frozen=True)
class FeatureTable:
    """The rows of one split of the feature table (``features/table/part-*.parquet``).

    Attributes:
        segment_ids: one id per row.
        speaker_ids: [N] int64.
        num_frames: [N] int64, F of each row at 100 frames/s (before truncation).
        is_mute: [N] bool, the silence rows RVC adds per speaker.
        content_dim: C, the same for every row.
    """

    segment_ids: list[str]
    speaker_ids: np.ndarray
    num_frames: np.ndarray
    is_mute: np.ndarray
    content_dim: int
    content: _Ragged
    f0_hz: _Ragged
    pitch_bins: _Ragged
    wav: _Ragged

    def __len__(self) -> int:
        return len(self.segment_ids)


def load_feature_table(features_dir: Path, split: str, *, hop_length: int) -> FeatureTable:
    """Read the ``split`` rows ("train" or "val") of ``features_dir/table/*.parquet``.

    Raises:
        FeatureTableError: no table, a missing column, mixed content dims, or a row whose stream
            lengths disagree with ``num_frames`` (each named).
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table_dir = Path(features_dir) / "table"
    files = sorted(table_dir.glob("part-*.parquet"))
    if not files:
        raise FeatureTableError(
            f"no feature table in {table_dir} (expected part-*.parquet written by the extract stage); "
            "run `rvc-ray extract` first"
        )
    import pyarrow as pa

    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise FeatureTableError(f"feature table {table_dir} lacks column(s) {missing}; found {table.column_names}")
    table = table.filter(pc.equal(table.column("split"), split))
    dims = set(table.column("content_dim").to_pylist())
    if len(dims) > 1:
        raise FeatureTableError(f"feature table {table_dir} mixes content dims {sorted(dims)} in split {split!r}")
    loaded = FeatureTable(
        segment_ids=[str(s) for s in table.column("segment_id").to_pylist()],
        speaker_ids=table.column("speaker_id").to_numpy().astype(np.int64),
        num_frames=table.column("num_frames").to_numpy().astype(np.int64),
        is_mute=table.column("is_mute").to_numpy(zero_copy_only=False).astype(bool),
        content_dim=int(dims.pop()) if dims else 0,
        **{name: _Ragged.from_column(table.column(name)) for name in _LIST_COLUMNS},
    )
    for i in range(len(loaded)):
        frames = int(loaded.num_frames[i])
        expected = {
            "content": frames * loaded.content_dim,
            "f0_hz": frames,
            "pitch_bins": frames,
            "wav": frames * hop_length,
        }
        for name, want in expected.items():
            got = getattr(loaded, name).row_length(i)
            if got != want:
                raise FeatureTableError(
                    f"feature table {table_dir}, segment {loaded.segment_ids[i]!r}: column {name!r} has {got} "
                    f"values, expected {want} (num_frames={frames}, content_dim={loaded.content_dim}, hop={hop_length})"
                )
    return loaded


@dataclass(frozen=True)
class FeatureItem:
    """One training clip, every stream aligned to F frames (F = ``length``).

    Shapes: content [F, C] float32, pitch_bins [F] int64 | None, f0_hz [F] float32 | None,
    spec [n_freq, F] float32, wav [F * hop] float32.
    """

    content: Tensor
    pitch_bins: Tensor | None
    f0_hz: Tensor | None
    spec: Tensor
    wav: Tensor
    speaker_id: int

    @property
    def length(self) -> int:
        return int(self.content.shape[0])


SpectrogramFn = Callable[["Tensor"], "Tensor"]


def _default_spectrogram_fn(audio: AudioConfig) -> SpectrogramFn:
    """wav [T] -> linear magnitude spectrogram [n_freq, T // hop] via :mod:`rvc_ray.audio.spectral`."""
    from rvc_ray.audio.spectral import compute_linear_spectrogram

    def spectrogram(wav: Tensor) -> Tensor:
        return compute_linear_spectrogram(wav.unsqueeze(0), audio.n_fft, audio.hop_length, audio.win_length)[0]

    return spectrogram


class TrainingItems:
    """Random access to the items of a :class:`FeatureTable` (a map-style dataset).

    Args:
        table: the rows.
        audio: the model's audio config (hop length, STFT).
        max_frames: ``data.max_frames``; longer rows are truncated (as RVC does at 900 frames).
        use_f0: ``model.use_f0``; without F0 the pitch streams are ``None``.
        spectrogram_fn: wav [T] -> spec [n_freq, frames]; defaults to the audio package's STFT.
    """

    def __init__(
        self,
        table: FeatureTable,
        audio: AudioConfig,
        *,
        max_frames: int,
        use_f0: bool = True,
        spectrogram_fn: SpectrogramFn | None = None,
    ) -> None:
        self.table = table
        self.hop_length = audio.hop_length
        self.max_frames = max_frames
        self.use_f0 = use_f0
        self._spectrogram = spectrogram_fn or _default_spectrogram_fn(audio)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def lengths(self) -> list[int]:
        """Frames per item after truncation (what the bucket sampler sorts by)."""
        return [min(int(n), self.max_frames) for n in self.table.num_frames]

    def __getitem__(self, index: int) -> FeatureItem:
        import torch

        t = self.table
        frames = min(int(t.num_frames[index]), self.max_frames)
        content = torch.from_numpy(t.content.row(index).reshape(-1, t.content_dim)[:frames].astype(np.float32))
        wav = torch.from_numpy(t.wav.row(index)[: frames * self.hop_length].astype(np.float32))
        spec = self._spectrogram(wav)
        frames = min(frames, int(spec.shape[-1]))
        pitch_bins = f0_hz = None
        if self.use_f0:
            pitch_bins = torch.from_numpy(t.pitch_bins.row(index)[:frames].astype(np.int64))
            f0_hz = torch.from_numpy(t.f0_hz.row(index)[:frames].astype(np.float32))
        return FeatureItem(
            content=content[:frames],
            pitch_bins=pitch_bins,
            f0_hz=f0_hz,
            spec=spec[:, :frames],
            wav=wav[: frames * self.hop_length],
            speaker_id=int(t.speaker_ids[index]),
        )

    def batch(self, indices: Sequence[int]) -> RVCBatch:
        """The padded batch of ``indices`` (in that order)."""
        return collate_items([self[i] for i in indices])


def collate_items(items: Sequence[FeatureItem]) -> RVCBatch:
    """Zero-pad items to the longest one, keeping their order.

    Returns an :class:`RVCBatch` with content [B, F, C], pitch_bins [B, F] | None, f0_hz [B, F] | None,
    spec [B, n_freq, F], wav [B, 1, F * hop] and the per-item lengths.
    """
    import torch

    from rvc_ray.data.batch import RVCBatch

    if not items:
        raise ValueError("cannot collate an empty list of items")
    max_frames = max(item.length for item in items)
    max_samples = max(int(item.wav.shape[0]) for item in items)
    size = len(items)
    first = items[0]
    device = first.content.device  # items cached on a GPU (train.cache_dataset_on_gpu) collate there
    content = torch.zeros(size, max_frames, first.content.shape[1], device=device)
    spec = torch.zeros(size, first.spec.shape[0], max_frames, device=device)
    wav = torch.zeros(size, 1, max_samples, device=device)
    use_f0 = first.pitch_bins is not None
    pitch_bins = torch.zeros(size, max_frames, dtype=torch.long, device=device) if use_f0 else None
    f0_hz = torch.zeros(size, max_frames, device=device) if use_f0 else None
    for row, item in enumerate(items):
        n = item.length
        content[row, :n] = item.content
        spec[row, :, :n] = item.spec
        wav[row, 0, : item.wav.shape[0]] = item.wav
        if pitch_bins is not None and f0_hz is not None and item.pitch_bins is not None and item.f0_hz is not None:
            pitch_bins[row, :n] = item.pitch_bins
            f0_hz[row, :n] = item.f0_hz
    lengths = torch.tensor([item.length for item in items], dtype=torch.long, device=device)
    return RVCBatch(
        content=content,
        content_lengths=lengths,
        pitch_bins=pitch_bins,
        f0_hz=f0_hz,
        spec=spec,
        spec_lengths=lengths.clone(),
        wav=wav,
        wav_lengths=torch.tensor([int(item.wav.shape[0]) for item in items], dtype=torch.long, device=device),
        speaker_id=torch.tensor([item.speaker_id for item in items], dtype=torch.long, device=device),
    )


def write_synthetic_feature_table(
    features_dir: Path,
    *,
    content_dim: int,
    sample_rate: int,
    frames: Sequence[int],
    splits: Sequence[str] | None = None,
    num_speakers: int = 2,
    seed: int = 0,
) -> Path:
    """Write a small random feature table in the extraction contract's schema (tests and benchmarks).

    Row ``i`` has ``frames[i]`` frames, a harmonic waveform at a constant random F0 and random content.
    Returns the written ``features_dir/table/part-00000.parquet``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    hop = sample_rate // 100
    splits = list(splits) if splits is not None else ["train"] * len(frames)
    rows: dict[str, list[object]] = {name: [] for name in (*REQUIRED_COLUMNS, "wav_16k")}
    for i, (num, split) in enumerate(zip(frames, splits, strict=True)):
        f0 = float(rng.uniform(100.0, 300.0))
        t = np.arange(num * hop) / sample_rate
        wav = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.01 * rng.standard_normal(t.shape)
        mel_f0 = 1127.0 * np.log(1 + f0 / 700.0)
        mel_lo, mel_hi = 1127.0 * np.log(1 + 50.0 / 700.0), 1127.0 * np.log(1 + 1100.0 / 700.0)
        coarse = int(np.clip(np.rint((mel_f0 - mel_lo) * 254 / (mel_hi - mel_lo) + 1), 1, 255))
        rows["segment_id"].append(f"{i % num_speakers}_{i:05d}_0000")
        rows["speaker_id"].append(i % num_speakers)
        rows["split"].append(split)
        rows["is_mute"].append(False)
        rows["num_frames"].append(num)
        rows["content_dim"].append(content_dim)
        rows["content"].append(rng.standard_normal(num * content_dim).astype(np.float32))
        rows["f0_hz"].append(np.full(num, f0, dtype=np.float32))
        rows["pitch_bins"].append(np.full(num, coarse, dtype=np.int32))
        rows["wav"].append(wav.astype(np.float32))
        rows["wav_16k"].append(wav[:: max(1, sample_rate // 16000)].astype(np.float32))
    schema = pa.schema(
        [
            ("segment_id", pa.string()),
            ("speaker_id", pa.int32()),
            ("split", pa.string()),
            ("is_mute", pa.bool_()),
            ("num_frames", pa.int32()),
            ("content_dim", pa.int32()),
            ("content", pa.list_(pa.float32())),
            ("f0_hz", pa.list_(pa.float32())),
            ("pitch_bins", pa.list_(pa.int32())),
            ("wav", pa.list_(pa.float32())),
            ("wav_16k", pa.list_(pa.float32())),
        ]
    )
    table = pa.Table.from_pydict(rows, schema=schema)
    out = Path(features_dir) / "table" / "part-00000.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    return out
