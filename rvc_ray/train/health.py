"""Training health: the errors that stop a run (each names its cause) and the batch check behind
:class:`BadBatchError`. Re-exported by :mod:`rvc_ray.train.steps`, which raises them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from rvc_ray.model.layers import sequence_mask

if TYPE_CHECKING:
    from rvc_ray.data.batch import RVCBatch

__all__ = [
    "BadBatchError",
    "LearningRateTooLowError",
    "NonFiniteLossError",
    "TrainingHealthError",
    "TrainingOutOfMemoryError",
    "ZeroGradientError",
    "find_batch_problem",
]


class TrainingHealthError(RuntimeError):
    """Training cannot go on safely; the message names the cause."""


class BadBatchError(TrainingHealthError):
    """The batch has empty, all-zero, non-finite or misaligned streams."""


class NonFiniteLossError(TrainingHealthError):
    """A loss or a gradient norm is NaN or infinite."""


class ZeroGradientError(TrainingHealthError):
    """No gradient reached the parameters (gradient norm exactly 0)."""


class LearningRateTooLowError(TrainingHealthError):
    """The learning rate decayed below ``optim.min_learning_rate``."""


class TrainingOutOfMemoryError(TrainingHealthError):
    """The step ran out of device memory; it would again on a restart (see :mod:`rvc_ray.train.memory`)."""


def find_batch_problem(batch: RVCBatch) -> str | None:
    """Describe what is wrong with a batch (None if it is fine to train on)."""
    lengths = batch.content_lengths
    if batch.content.shape[0] == 0:
        return "the batch is empty (0 items)"
    empty = (lengths <= 0).nonzero().flatten().tolist()
    if empty:
        return f"batch items {empty} have zero-length content (content_lengths=0)"
    if (batch.spec_lengths <= 0).any():
        return f"batch items {(batch.spec_lengths <= 0).nonzero().flatten().tolist()} have spec_lengths=0"
    if batch.content.shape[1] != batch.spec.shape[2]:
        return (
            f"content has {batch.content.shape[1]} frames but spec has {batch.spec.shape[2]}: streams are not "
            "aligned to the same frame count"
        )
    if not torch.isfinite(batch.content).all():
        return "content features contain NaN or Inf"
    valid = sequence_mask(lengths, batch.content.shape[1]).to(batch.content.dtype)
    peak = (batch.content.abs().amax(dim=-1) * valid).amax(dim=-1)
    zero_items = (peak == 0).nonzero().flatten().tolist()
    if zero_items:
        return f"batch items {zero_items} have all-zero content features (broken feature extraction?)"
    for name in ("f0_hz", "spec", "wav"):
        value = getattr(batch, name)
        if value is not None and not torch.isfinite(value).all():
            return f"{name} contains NaN or Inf"
    if batch.pitch_bins is not None and (int(batch.pitch_bins.min()) < 0 or int(batch.pitch_bins.max()) > 255):
        return f"pitch_bins outside 0..255 (min {int(batch.pitch_bins.min())}, max {int(batch.pitch_bins.max())})"
    return None
