"""One GAN iteration of RVC: generator forward, discriminator step, generator step (docs/rvc-reference.md §6.4).

Each step function does one optimizer update and returns a metrics dict. They never reach into
``.module`` and never toggle ``requires_grad``, so they work unchanged when ``gen`` / ``disc`` are wrapped in
DistributedDataParallel. Metric names are those of :mod:`rvc_ray.train.metric_names`: ``loss/d/total``,
``loss/g/total``, the unweighted terms ``loss/g/adv``, ``loss/g/fm``, ``loss/g/mel``, ``loss/g/kl`` (total is the
weighted sum ``c_adv*adv + c_fm*fm + c_mel*mel + c_kl*kl``), ``grad_norm_d``, ``grad_norm_g`` (before clipping),
``skipped`` (1.0 when an update of the iteration was skipped: by the fp16 GradScaler, which also sets
``skipped/scaler``, or under ``nonfinite_policy="skip"``).

Precision (``train.precision``): the model forwards run under autocast (bf16 on CPU or CUDA; fp16 on CUDA
with one GradScaler), while the STFT, the mels and every loss are computed in fp32, as RVC and Applio do.

Health guards raise a :class:`TrainingHealthError` subclass naming the cause (or, under policy ``"skip"``,
skip the update and log a warning): a bad batch (zero-length, all-zero or non-finite features, misaligned
streams), a non-finite loss or gradient norm, a zero gradient norm. A learning rate below
``min_learning_rate`` always raises.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from rvc_ray.audio.spectral import compute_mel_spectrogram, spectrogram_to_mel
from rvc_ray.losses import (
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    kl_loss,
    mel_l1_loss,
)
from rvc_ray.model.layers import slice_segments
from rvc_ray.train import metric_names as names
from rvc_ray.train.health import (
    BadBatchError,
    LearningRateTooLowError,
    NonFiniteLossError,
    TrainingHealthError,
    TrainingOutOfMemoryError,
    ZeroGradientError,
    find_batch_problem,
)
from rvc_ray.train.step_settings import StepSettings, autocast_context, build_grad_scaler, resolve_precision

if TYPE_CHECKING:
    from rvc_ray.config import OptimConfig
    from rvc_ray.data.batch import RVCBatch

__all__ = [
    "BadBatchError",
    "GeneratorPass",
    "LearningRateTooLowError",
    "NonFiniteLossError",
    "StepSettings",
    "TrainingHealthError",
    "TrainingOutOfMemoryError",
    "ZeroGradientError",
    "adversarial_terms",
    "autocast_context",
    "build_grad_scaler",
    "build_optimizers",
    "build_schedulers",
    "d_step",
    "find_batch_problem",
    "g_step",
    "generator_forward",
    "generator_inputs",
    "handle_problem",
    "resolve_precision",
    "train_step",
]

log = logging.getLogger(__name__)


@dataclass
class GeneratorPass:
    """Result of :func:`generator_forward`.

    Shapes: wav_fake / wav_real [B, 1, S*hop]; mel_fake / mel_real [B, n_mels, S] (fp32); z_p, logs_q, m_p,
    logs_p [B, inter, F]; z_mask [B, 1, F]; slice_starts [B] (frame index). S = segment_frames.
    """

    wav_fake: Tensor
    wav_real: Tensor
    mel_fake: Tensor
    mel_real: Tensor
    z_p: Tensor
    logs_q: Tensor
    m_p: Tensor
    logs_p: Tensor
    z_mask: Tensor
    slice_starts: Tensor


# --------------------------------------------------------------------------- optimizers


def build_optimizers(
    gen: nn.Module, disc: nn.Module, optim: OptimConfig
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """AdamW for G and D as RVC (lr 1e-4, betas (0.8, 0.99), eps 1e-9, weight decay 0.01 by default)."""
    opt_g = torch.optim.AdamW(
        gen.parameters(), lr=optim.lr_generator, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay
    )
    opt_d = torch.optim.AdamW(
        disc.parameters(), lr=optim.lr_discriminator, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay
    )
    return opt_g, opt_d


def build_schedulers(
    opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, optim: OptimConfig, last_epoch: int = -1
) -> tuple[torch.optim.lr_scheduler.ExponentialLR, torch.optim.lr_scheduler.ExponentialLR]:
    """Per-epoch ExponentialLR(gamma=optim.lr_decay) for G and D.

    ``last_epoch=k >= 0`` (RVC passes ``epoch - 2`` on resume) sets the lr to the closed form
    ``initial_lr * gamma ** (k + 1)``, whatever lr a loaded optimizer state carried. Prefer restoring the
    scheduler's own ``state_dict`` when you have it.
    """
    schedulers = []
    for opt in (opt_g, opt_d):
        if last_epoch >= 0:
            for group in opt.param_groups:
                group.setdefault("initial_lr", group["lr"])
        scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=optim.lr_decay, last_epoch=last_epoch)
        if last_epoch >= 0:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * optim.lr_decay ** (last_epoch + 1)
            scheduler._last_lr = [group["lr"] for group in opt.param_groups]
        schedulers.append(scheduler)
    return schedulers[0], schedulers[1]


# --------------------------------------------------------------------------- health checks


def _check_learning_rate(optimizer: torch.optim.Optimizer, settings: StepSettings, who: str) -> None:
    lr = min(float(group["lr"]) for group in optimizer.param_groups)
    if lr < settings.min_learning_rate:
        raise LearningRateTooLowError(
            f"the {who} learning rate {lr:.3g} is below optim.min_learning_rate={settings.min_learning_rate:.3g}: "
            "the lr decay has made training useless; raise the learning rate or lower optim.min_learning_rate"
        )


def handle_problem(problem: str, settings: StepSettings, error: type[TrainingHealthError]) -> None:
    if settings.nonfinite_policy == "raise":
        raise error(problem)
    log.warning("skipping the update: %s", problem)


def _optimizer_update(
    optimizer: torch.optim.Optimizer,
    loss: Tensor,
    terms: dict[str, Tensor],
    settings: StepSettings,
    scaler: torch.amp.GradScaler | None,
    who: str,
) -> tuple[float, str | None]:
    """Backward, unscale, norm (+clip), health checks, step.

    Returns (grad norm before clipping, why the update was skipped or None): ``"scaler"`` when the
    GradScaler found Inf/NaN gradients (fp16 overflow: the scaler skips the step and lowers its scale, as
    RVC and Applio train; never a health error), ``"policy"`` when a health problem was skipped under
    ``nonfinite_policy="skip"``.
    """
    if settings.precision == "fp16" and scaler is None:
        raise ValueError("precision fp16 needs a GradScaler (build_grad_scaler)")
    optimizer.zero_grad(set_to_none=True)
    # Gradients only for this optimizer's parameters: in the G step no weight gradient of D is computed
    # (autograd still propagates through D's activations to the fake waveform).
    own = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    (scaler.scale(loss) if scaler is not None else loss).backward(inputs=own)
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not params:
        norm = 0.0
    elif settings.grad_clip_norm is not None:
        norm = float(torch.nn.utils.clip_grad_norm_(params, settings.grad_clip_norm))
    else:
        norm = float(torch.nn.utils.get_total_norm([p.grad for p in params]))
    if scaler is not None and not math.isfinite(norm):
        # The (DDP-reduced, so identical on every rank) gradients hold Inf/NaN: scaler.step skips the update.
        scaler.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        return norm, "scaler"
    problem, error = None, TrainingHealthError
    bad_terms = [name for name, value in terms.items() if not math.isfinite(float(value.detach()))]
    if bad_terms:
        problem, error = f"non-finite {who} loss: {', '.join(bad_terms)} = NaN/Inf", NonFiniteLossError
    elif not math.isfinite(norm):
        problem, error = f"non-finite {who} gradient norm ({norm})", NonFiniteLossError
    elif norm == 0.0:
        problem = f"the {who} gradient norm is exactly 0: no gradient reached its parameters"
        error = ZeroGradientError
    if problem is not None:
        optimizer.zero_grad(set_to_none=True)
        handle_problem(problem, settings, error)
        return norm, "policy"
    if scaler is not None:
        scaler.step(optimizer)
    else:
        optimizer.step()
    return norm, None


# --------------------------------------------------------------------------- the steps


def _fp32(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Each tensor in float32 (a no-op for fp32 tensors): losses never run in bf16/fp16."""
    return [t.float() for t in tensors]


def generator_inputs(batch: RVCBatch) -> tuple[Tensor | None, ...]:
    """The positional arguments of a training forward of the synthesizer (ours, RVC's and Applio's):
    ``(content, content_lengths, pitch_bins, f0_hz, spec, spec_lengths, speaker_id)``."""
    return (
        batch.content,
        batch.content_lengths,
        batch.pitch_bins,
        batch.f0_hz,
        batch.spec,
        batch.spec_lengths,
        batch.speaker_id,
    )


def generator_forward(gen: nn.Module, batch: RVCBatch, settings: StepSettings) -> GeneratorPass:
    """G training forward on a random window per item, plus the aligned real slice and both mels."""
    batch = batch.to(settings.device)
    with autocast_context(settings):
        out = gen(*generator_inputs(batch))
    seg = settings.segment_frames
    wav_real = slice_segments(batch.wav, out.slice_starts * settings.hop_length, seg * settings.hop_length)
    with torch.autocast(device_type=torch.device(settings.device).type, enabled=False):
        mel_real = spectrogram_to_mel(slice_segments(batch.spec.float(), out.slice_starts, seg), settings.audio)
        mel_fake = compute_mel_spectrogram(out.wav.float(), settings.audio)
    return GeneratorPass(
        wav_fake=out.wav,
        wav_real=wav_real,
        mel_fake=mel_fake,
        mel_real=mel_real,
        z_p=out.z_p,
        logs_q=out.logs_q,
        m_p=out.m_p,
        logs_p=out.logs_p,
        z_mask=out.z_mask,
        slice_starts=out.slice_starts,
    )


def d_step(
    disc: nn.Module,
    opt_d: torch.optim.Optimizer,
    gpass: GeneratorPass,
    settings: StepSettings,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
    """One discriminator update on (real, detached fake). G receives no gradient."""
    _check_learning_rate(opt_d, settings, "discriminator")
    with autocast_context(settings):
        real_logits, fake_logits, _, _ = disc(gpass.wav_real, gpass.wav_fake.detach())
    loss = discriminator_loss(_fp32(real_logits), _fp32(fake_logits))
    norm, skipped = _optimizer_update(opt_d, loss, {names.LOSS_D_TOTAL: loss}, settings, scaler, "discriminator")
    return {
        names.LOSS_D_TOTAL: float(loss.detach()),
        names.GRAD_NORM_D: norm,
        names.SKIPPED_D: float(skipped is not None),
        names.SKIPPED_D_SCALER: float(skipped == "scaler"),
    }


def adversarial_terms(disc: nn.Module, gpass: GeneratorPass, settings: StepSettings) -> dict[str, Tensor]:
    """The generator's adversarial terms ``loss/g/adv`` and ``loss/g/fm`` (fp32 scalars), D read-only.

    D computes no parameter gradients from them (:func:`g_step` backpropagates into G's parameters only), so a
    DDP-wrapped D must not expect a gradient reduction for this forward: it runs under DDP's ``no_sync()``.
    """
    no_sync = getattr(disc, "no_sync", None)
    with no_sync() if callable(no_sync) else contextlib.nullcontext(), autocast_context(settings):
        _, fake_logits, real_fmaps, fake_fmaps = disc(gpass.wav_real, gpass.wav_fake)
    return {
        names.LOSS_G_ADV: generator_adversarial_loss(_fp32(fake_logits)),
        names.LOSS_G_FM: feature_matching_loss([_fp32(m) for m in real_fmaps], [_fp32(m) for m in fake_fmaps]),
    }


def g_step(
    adversarial: Mapping[str, Tensor],
    opt_g: torch.optim.Optimizer,
    gpass: GeneratorPass,
    settings: StepSettings,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
    """One generator update: the adversary's terms (``loss/g/adv``, ``loss/g/fm`` from
    :func:`adversarial_terms`, D read-only) + mel + KL. Only G's parameters get gradients.

    With a GradScaler, ``scaler.update()`` runs here, once per iteration (after :func:`d_step`).
    """
    _check_learning_rate(opt_g, settings, "generator")
    terms = {  # every loss in fp32, whatever precision the forwards ran in
        names.LOSS_G_ADV: adversarial[names.LOSS_G_ADV],
        names.LOSS_G_FM: adversarial[names.LOSS_G_FM],
        names.LOSS_G_MEL: mel_l1_loss(gpass.mel_real, gpass.mel_fake),
        names.LOSS_G_KL: kl_loss(
            *(t.float() for t in (gpass.z_p, gpass.logs_q, gpass.m_p, gpass.logs_p, gpass.z_mask))
        ),
    }
    weights = settings.loss
    total = (
        weights.c_adv * terms[names.LOSS_G_ADV]
        + weights.c_fm * terms[names.LOSS_G_FM]
        + weights.c_mel * terms[names.LOSS_G_MEL]
        + weights.c_kl * terms[names.LOSS_G_KL]
    )
    norm, skipped = _optimizer_update(opt_g, total, terms, settings, scaler, "generator")
    if scaler is not None:
        scaler.update()
    metrics = {name: float(value.detach()) for name, value in terms.items()}
    metrics.update(
        {
            names.LOSS_G_TOTAL: float(total.detach()),
            names.GRAD_NORM_G: norm,
            names.SKIPPED_G: float(skipped is not None),
            names.SKIPPED_G_SCALER: float(skipped == "scaler"),
        }
    )
    return metrics


def train_step(
    gen: nn.Module,
    disc: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    batch: RVCBatch,
    settings: StepSettings,
    scaler: torch.amp.GradScaler | None = None,
    *,
    check_batch: bool = True,
) -> dict[str, float]:
    """One GAN iteration on loose models and optimizers: :meth:`rvc_ray.train.gan_state.GANState.train_step`
    (generator forward, the adversary's D step, G's step) on a state holding them (no schedulers).

    ``gen``/``disc`` may be DDP wrappers. Returns the merged metrics plus ``skipped`` and ``skipped/scaler``.
    """
    from rvc_ray.train.gan_state import Adversary, GANState, GeneratorState  # gan_state imports this module

    gan = GANState(GeneratorState(gen, opt_g, None), Adversary(disc, opt_d, None, scaler=scaler))  # type: ignore[arg-type]
    return gan.train_step(batch, settings, check_batch=check_batch)
