"""Held-out validation: mel L1 and mel-cepstral distortion of the generator's inference output.

Independent of the adversarial weight ``loss.c_adv``: the generator synthesises each held-out clip
with :meth:`Synthesizer.infer` (prior sample with a fixed noise generator per item, reverse flow,
decoder), exactly as a user would hear it, and the log-mel of the result is compared with the log-mel
of the real clip over the same frames.

``val/mel_l1`` = mean over items of mean |log-mel(real) - log-mel(generated)| (natural-log mels, as
RVC's training mel loss before the ``c_mel`` weight). ``val/mcd`` = mean over items and frames of
``10 / ln 10 * sqrt(2 * sum_k (c_k - c'_k)^2)`` over mel-cepstral coefficients 1..13, where the
cepstra are the orthonormal DCT-II of the natural-log mel (an MFCC-style approximation of MCD, in
dB; comparable between epochs and runs of the same config, not with published MCD numbers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from rvc_ray.config import AudioConfig, RunConfig
from rvc_ray.train import metric_names as names

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from rvc_ray.data.dataset import TrainingItems
    from rvc_ray.model.synthesizer import Synthesizer

__all__ = [
    "NUM_CEPSTRA",
    "ValidationSums",
    "compute_mcd",
    "compute_mel_l1",
    "evaluate_items",
    "usable_min_frames",
    "validate_epoch",
]

NUM_CEPSTRA = 13
NOISE_SCALE = 0.66666
_MCD_CONSTANT = 10.0 / math.log(10.0) * math.sqrt(2.0)


def compute_mel_l1(mel_real: Tensor, mel_gen: Tensor) -> float:
    """Mean absolute difference of two [n_mels, F] log-mels over their common frames."""
    frames = min(mel_real.shape[-1], mel_gen.shape[-1])
    return float((mel_real[..., :frames] - mel_gen[..., :frames]).abs().mean())


def _dct_matrix(n_mels: int, num_coeffs: int) -> np.ndarray:
    k = np.arange(num_coeffs)[:, None]
    n = np.arange(n_mels)[None, :]
    basis = np.cos(np.pi / n_mels * (n + 0.5) * k) * np.sqrt(2.0 / n_mels)
    basis[0] /= np.sqrt(2.0)
    return basis.astype(np.float32)


def compute_mcd(mel_real: Tensor, mel_gen: Tensor, num_coeffs: int = NUM_CEPSTRA) -> float:
    """Mel-cepstral distortion (dB) of two [n_mels, F] natural-log mels, coefficients 1..num_coeffs-1."""
    import torch

    frames = min(mel_real.shape[-1], mel_gen.shape[-1])
    n_mels = int(mel_real.shape[-2])
    dct = torch.from_numpy(_dct_matrix(n_mels, min(num_coeffs, n_mels))).to(mel_real.device)
    diff = dct @ (mel_real[..., :frames].float() - mel_gen[..., :frames].float())
    per_frame = diff[1:].pow(2).sum(0).sqrt() * _MCD_CONSTANT
    return float(per_frame.mean())


@dataclass
class ValidationSums:
    """Sums over this worker's share of the held-out items (all-reduced by the loop).

    ``mel_org`` / ``mel_gen`` ([n_mels, F]) and ``previews`` (generated waveforms [T]) are kept for the
    first items only, for TensorBoard.
    """

    mel_l1_sum: float = 0.0
    mcd_sum: float = 0.0
    count: int = 0
    mel_org: np.ndarray | None = None
    mel_gen: np.ndarray | None = None
    previews: list[np.ndarray] = field(default_factory=list)


def evaluate_items(
    generator: Synthesizer,
    items: TrainingItems,
    indices: Sequence[int],
    audio: AudioConfig,
    *,
    seed: int,
    device: torch.device,
    num_previews: int = 0,
) -> ValidationSums:
    """Synthesise each held-out item (one at a time, so no padding effects) and score it.

    The noise generator of item ``i`` is seeded with ``seed + i``, so scores are reproducible and
    independent of which worker evaluates the item.
    """
    import torch

    from rvc_ray.audio.spectral import compute_mel_spectrogram

    sums = ValidationSums()
    was_training = generator.training
    generator.eval()
    try:
        for position, index in enumerate(indices):
            item = items[index]
            noise = torch.Generator(device="cpu").manual_seed(seed + int(index))
            lengths = torch.tensor([item.length], dtype=torch.long, device=device)
            wav_gen = generator.infer(
                item.content[None].to(device),
                lengths,
                item.pitch_bins[None].to(device) if item.pitch_bins is not None else None,
                item.f0_hz[None].to(device) if item.f0_hz is not None else None,
                torch.tensor([item.speaker_id], dtype=torch.long, device=device),
                noise_scale=NOISE_SCALE,
                generator=noise,
            )
            wav_gen = wav_gen.float().reshape(1, -1)
            mel_real = compute_mel_spectrogram(item.wav[None].to(device), audio)[0]
            mel_gen = compute_mel_spectrogram(wav_gen, audio)[0]
            sums.mel_l1_sum += compute_mel_l1(mel_real, mel_gen)
            sums.mcd_sum += compute_mcd(mel_real, mel_gen)
            sums.count += 1
            if position == 0:
                sums.mel_org = mel_real.cpu().numpy()
                sums.mel_gen = mel_gen.cpu().numpy()
            if position < num_previews:
                sums.previews.append(wav_gen[0].cpu().numpy())
    finally:
        generator.train(was_training)
    return sums


def usable_min_frames(cfg: RunConfig) -> int:
    """The fewest frames a clip may have: ``data.min_frames`` if set, and always enough for the STFT's
    reflect padding (``(n_fft - hop) / 2`` samples) — shorter rows (e.g. failed extractions with 0 frames)
    are left out and counted in the start record's ``dropped_short_items``."""
    pad = (cfg.audio.n_fft - cfg.audio.hop_length) // 2
    stft_min = pad // cfg.audio.hop_length + 1
    return max(stft_min, cfg.data.min_frames or 0)


def validate_epoch(
    cfg: RunConfig,
    gen: Synthesizer,
    val_items: TrainingItems | None,
    train_items: TrainingItems,
    *,
    rank: int,
    world: int,
    device: torch.device,
) -> tuple[dict[str, float], ValidationSums]:
    """``val/mel_l1`` and ``val/mcd`` over the held-out split, each worker scoring a contiguous share of it.

    Without a held-out split (``features.validation_fraction=0``) the first few training items are
    scored instead, and ``val/on_train_items`` is 1 so nobody mistakes it for a held-out score.
    """
    from rvc_ray.train.collectives import sum_across_workers

    items = val_items if val_items is not None else train_items
    shortest = usable_min_frames(cfg)
    usable = [i for i, n in enumerate(items.lengths) if n >= shortest]
    indices = usable if val_items is not None else usable[:4]
    share = -(-len(indices) // world)
    mine = indices[rank * share : (rank + 1) * share]  # contiguous: rank 0 holds the first clips (previews)
    previews = cfg.train.num_preview_clips if rank == 0 else 0
    sums = evaluate_items(gen, items, mine, cfg.audio, seed=cfg.experiment.seed, device=device, num_previews=previews)
    total_l1, total_mcd, count = sum_across_workers([sums.mel_l1_sum, sums.mcd_sum, float(sums.count)], device)
    count = max(count, 1.0)
    metrics = {names.VAL_MEL_L1: total_l1 / count, names.VAL_MCD: total_mcd / count}
    metrics[names.VAL_ON_TRAIN_ITEMS] = 0.0 if val_items is not None else 1.0
    return metrics, sums
