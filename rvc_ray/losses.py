"""GAN, feature-matching, mel and KL losses of RVC / VITS as pure functions (computed in fp32).

The weights (``c_adv``, ``c_fm``, ``c_mel``, ``c_kl``) are applied by the training step, not here:
every function returns the raw, unweighted term. RVC's ``feature_loss`` includes a factor 2 internally;
here that factor is ``LossConfig.c_fm = 2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "discriminator_loss",
    "feature_matching_loss",
    "generator_adversarial_loss",
    "kl_loss",
    "mel_l1_loss",
]


def discriminator_loss(real_logits: Sequence[Tensor], fake_logits: Sequence[Tensor]) -> Tensor:
    """LSGAN discriminator loss: sum_k mean((1 - D_k(y))^2) + mean(D_k(y_hat)^2). Logits: one [B, N_k] per sub-D."""
    if len(real_logits) != len(fake_logits):
        raise ValueError(f"{len(real_logits)} real vs {len(fake_logits)} fake discriminator outputs")
    total = torch.zeros((), device=real_logits[0].device)
    for real, fake in zip(real_logits, fake_logits, strict=True):
        total = total + torch.mean((1 - real.float()) ** 2) + torch.mean(fake.float() ** 2)
    return total


def generator_adversarial_loss(fake_logits: Sequence[Tensor]) -> Tensor:
    """LSGAN generator loss: sum_k mean((1 - D_k(y_hat))^2)."""
    total = torch.zeros((), device=fake_logits[0].device)
    for fake in fake_logits:
        total = total + torch.mean((1 - fake.float()) ** 2)
    return total


def feature_matching_loss(real_fmaps: Sequence[Sequence[Tensor]], fake_fmaps: Sequence[Sequence[Tensor]]) -> Tensor:
    """sum_k sum_l mean|fmap_real (detached) - fmap_fake| (RVC's ``feature_loss`` without its factor 2)."""
    total = torch.zeros((), device=fake_fmaps[0][0].device)
    for real_maps, fake_maps in zip(real_fmaps, fake_fmaps, strict=True):
        for real, fake in zip(real_maps, fake_maps, strict=True):
            total = total + torch.mean(torch.abs(real.detach().float() - fake.float()))
    return total


def mel_l1_loss(mel_real: Tensor, mel_fake: Tensor) -> Tensor:
    """Mean absolute difference of two log-mels [B, n_mels, F] (RVC multiplies this by c_mel = 45)."""
    if mel_real.shape != mel_fake.shape:
        raise ValueError(f"mel shapes differ: real {tuple(mel_real.shape)} vs fake {tuple(mel_fake.shape)}")
    return torch.nn.functional.l1_loss(mel_fake.float(), mel_real.float())


def kl_loss(z_p: Tensor, logs_q: Tensor, m_p: Tensor, logs_p: Tensor, z_mask: Tensor) -> Tensor:
    """VITS single-sample KL(q || p) estimate per valid latent element.

    sum[(logs_p - logs_q - 0.5) + 0.5 (z_p - m_p)^2 exp(-2 logs_p)] * mask / sum(mask).
    z_p, logs_q, m_p, logs_p: [B, inter, F]; z_mask: [B, 1, F]. Its expectation over z ~ q is the Gaussian KL (>= 0).
    """
    z_p, logs_q, m_p, logs_p, z_mask = (t.float() for t in (z_p, logs_q, m_p, logs_p, z_mask))
    kl = logs_p - logs_q - 0.5
    kl = kl + 0.5 * ((z_p - m_p) ** 2) * torch.exp(-2.0 * logs_p)
    return torch.sum(kl * z_mask) / torch.sum(z_mask).clamp(min=1.0)
