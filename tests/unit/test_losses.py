"""Loss identities (pure functions)."""

from __future__ import annotations

import math

import torch

from rvc_ray.losses import (
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    kl_loss,
    mel_l1_loss,
)


def test_mel_l1_of_identical_mels_is_zero() -> None:
    mel = torch.randn(2, 40, 16)
    assert float(mel_l1_loss(mel, mel)) == 0.0
    assert math.isclose(float(mel_l1_loss(mel, mel + 0.5)), 0.5, rel_tol=1e-6)


def test_lsgan_discriminator_is_zero_for_perfect_outputs() -> None:
    real = [torch.ones(2, 10), torch.ones(2, 7)]
    fake = [torch.zeros(2, 10), torch.zeros(2, 7)]
    assert float(discriminator_loss(real, fake)) == 0.0
    # swapped: each sub-D contributes 1 + 1
    assert float(discriminator_loss(fake, real)) == 4.0


def test_lsgan_generator_is_zero_when_fakes_fool_d() -> None:
    assert float(generator_adversarial_loss([torch.ones(2, 5), torch.ones(2, 3)])) == 0.0
    assert float(generator_adversarial_loss([torch.zeros(2, 5)])) == 1.0


def test_feature_matching_zero_on_equal_maps_and_detaches_real() -> None:
    real = [[torch.randn(2, 4, 8, requires_grad=True), torch.randn(2, 1, 8, requires_grad=True)]]
    fake = [[r.detach().clone().requires_grad_(True) for r in real[0]]]
    assert float(feature_matching_loss(real, fake).detach()) == 0.0
    fake[0][0].data += 1.0
    loss = feature_matching_loss(real, fake)
    assert math.isclose(float(loss.detach()), 1.0, rel_tol=1e-6)  # raw sum, without RVC's factor 2 (that is c_fm)
    loss.backward()
    assert real[0][0].grad is None and fake[0][0].grad is not None


def test_kl_is_an_unbiased_estimate_of_a_nonnegative_gaussian_kl() -> None:
    gen = torch.Generator().manual_seed(0)
    shape = (1, 4, 200_000)
    mask = torch.ones(1, 1, shape[-1])
    m_p, logs_p = torch.full(shape, 0.3), torch.full(shape, -0.2)
    m_q, logs_q = torch.full(shape, -0.1), torch.full(shape, 0.1)
    z_p = m_q + torch.exp(logs_q) * torch.randn(shape, generator=gen)  # flow = identity
    estimate = float(kl_loss(z_p, logs_q, m_p, logs_p, mask)) / shape[1]
    analytic = -0.2 - 0.1 + (math.exp(0.2) + 0.16) / (2 * math.exp(-0.4)) - 0.5
    assert analytic > 0
    assert math.isclose(estimate, analytic, rel_tol=0.02)
    # q == p: expectation 0
    z_same = m_p + torch.exp(logs_p) * torch.randn(shape, generator=gen)
    assert abs(float(kl_loss(z_same, logs_p, m_p, logs_p, mask))) < 0.02


def test_kl_ignores_masked_frames() -> None:
    z_p, logs_q, m_p, logs_p = (torch.randn(2, 3, 10) for _ in range(4))
    mask = torch.ones(2, 1, 10)
    mask[:, :, 6:] = 0
    base = kl_loss(z_p, logs_q, m_p, logs_p, mask)
    z_p2 = z_p.clone()
    z_p2[:, :, 6:] = 1e3
    assert float(kl_loss(z_p2, logs_q, m_p, logs_p, mask)) == float(base)
