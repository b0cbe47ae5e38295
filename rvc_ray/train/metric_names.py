"""Every metric name of a training run, in one place: the steps, the epoch reduction, the loop, the
reporters and docs/training.md ("Metrics") all use these.

Names are ``group/name`` as RVC users read them in TensorBoard (docs/rvc-reference.md §6.7). The generator's
loss terms are ``loss/g/<term>``, one per weight of :class:`~rvc_ray.config.LossConfig` (``c_<term>``): the
terms are unweighted, ``loss/g/total`` is the weighted sum. Importing this module imports neither torch nor ray.
"""

from __future__ import annotations

__all__ = [
    "BEST_EPOCH",
    "BEST_VAL_MEL_L1",
    "GENERATOR_TERMS",
    "GRAD_NORM_D",
    "GRAD_NORM_G",
    "LEARNING_RATE",
    "LOSS_D_TOTAL",
    "LOSS_G_ADV",
    "LOSS_G_FM",
    "LOSS_G_KL",
    "LOSS_G_MEL",
    "LOSS_G_TOTAL",
    "SCALAR_NAMES",
    "SKIPPED",
    "SKIPPED_D",
    "SKIPPED_D_SCALER",
    "SKIPPED_G",
    "SKIPPED_G_SCALER",
    "SKIPPED_SCALER",
    "TRAIN_METRIC_KEYS",
    "VAL_MCD",
    "VAL_MEL_L1",
    "VAL_ON_TRAIN_ITEMS",
    "generator_term",
]


def generator_term(term: str) -> str:
    """The metric name of a generator loss term: ``adv`` -> ``loss/g/adv`` (weighted by ``loss.c_adv``)."""
    return f"loss/g/{term}"


LOSS_D_TOTAL = "loss/d/total"
"""LSGAN discriminator loss over every sub-discriminator."""
LOSS_G_TOTAL = generator_term("total")
"""The generator objective ``c_adv*adv + c_fm*fm + c_mel*mel + c_kl*kl``."""
LOSS_G_ADV = generator_term("adv")
LOSS_G_FM = generator_term("fm")
LOSS_G_MEL = generator_term("mel")
LOSS_G_KL = generator_term("kl")
GENERATOR_TERMS = (LOSS_G_ADV, LOSS_G_FM, LOSS_G_MEL, LOSS_G_KL)
"""The unweighted generator loss terms, in the order they are summed."""

GRAD_NORM_D = "grad_norm_d"
GRAD_NORM_G = "grad_norm_g"
"""Gradient L2 norms before clipping (after DDP averaging)."""
LEARNING_RATE = "learning_rate"
"""The generator's current learning rate."""

SKIPPED = "skipped"
"""1.0 when an update of the iteration was skipped (GradScaler, or ``nonfinite_loss_policy="skip"``)."""
SKIPPED_SCALER = "skipped/scaler"
"""1.0 when the fp16 GradScaler skipped an update of the iteration."""
SKIPPED_D, SKIPPED_D_SCALER = "skipped/d", "skipped/d/scaler"
SKIPPED_G, SKIPPED_G_SCALER = "skipped/g", "skipped/g/scaler"
"""Per-update skip flags of :func:`~rvc_ray.train.steps.d_step` / ``g_step``, merged by ``train_step``."""

VAL_MEL_L1 = "val/mel_l1"
VAL_MCD = "val/mcd"
VAL_ON_TRAIN_ITEMS = "val/on_train_items"
"""Validation scores; ``val/on_train_items`` is 1 when there was no held-out split."""
BEST_VAL_MEL_L1 = "best/val_mel_l1"
BEST_EPOCH = "best/epoch"

TRAIN_METRIC_KEYS = (
    LOSS_D_TOTAL,
    LOSS_G_TOTAL,
    *GENERATOR_TERMS,
    GRAD_NORM_D,
    GRAD_NORM_G,
    LEARNING_RATE,
    SKIPPED,
    SKIPPED_SCALER,
)
"""The per-step metrics averaged across workers (a fixed list: every rank must all-reduce the same keys)."""

SCALAR_NAMES = (LOSS_G_TOTAL, LOSS_D_TOTAL, *GENERATOR_TERMS, GRAD_NORM_G, GRAD_NORM_D, LEARNING_RATE)
"""The per-step scalars every TensorBoard run shows (validation adds ``val/mel_l1`` and ``val/mcd``)."""
