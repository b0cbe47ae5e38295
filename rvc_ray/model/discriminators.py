"""Multi-period discriminator (scale sub-discriminator + one per period), key-compatible with RVC ``f0D*.pth``.

``MultiPeriodDiscriminator(periods=(2, 3, 5, 7, 11, 17, 23, 37))`` is RVC's ``MultiPeriodDiscriminatorV2``;
periods ``(2, 3, 5, 7, 11, 17)`` give the v1 one. Keys: ``discriminators.{0..P}.{convs.N,conv_post}.*``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rvc_ray.model.layers import LRELU_SLOPE, apply_weight_norm, get_padding

__all__ = ["DiscriminatorOutput", "MultiPeriodDiscriminator", "PeriodDiscriminator", "ScaleDiscriminator"]

DiscriminatorOutput = tuple[list[Tensor], list[Tensor], list[list[Tensor]], list[list[Tensor]]]
"""(real logits per sub-D [B, N_k], fake logits, real feature maps per sub-D, fake feature maps)."""


def _norm(module: nn.Module, use_spectral_norm: bool) -> nn.Module:
    if use_spectral_norm:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.nn.utils.spectral_norm(module)
    return apply_weight_norm(module)


def _run_conv_stack(convs: nn.ModuleList, conv_post: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Each conv then LeakyReLU(0.1), then ``conv_post``: (flattened logits [B, N], every activation)."""
    fmap = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        fmap.append(x)
    x = conv_post(x)
    fmap.append(x)
    return torch.flatten(x, 1, -1), fmap


class ScaleDiscriminator(nn.Module):
    """RVC ``DiscriminatorS``: grouped strided Conv1d stack on the raw waveform."""

    def __init__(self, use_spectral_norm: bool = False, channel_divisor: int = 1) -> None:
        super().__init__()
        d = channel_divisor
        specs = [
            (1, 16, 15, 1, 1, 7),
            (16, 64, 41, 4, 4, 20),
            (64, 256, 41, 4, 16, 20),
            (256, 1024, 41, 4, 64, 20),
            (1024, 1024, 41, 4, 256, 20),
            (1024, 1024, 5, 1, 1, 2),
        ]
        specs = [(max(1, i // d) if i > 1 else 1, o // d, k, s, g, p) for i, o, k, s, g, p in specs]
        self.convs = nn.ModuleList(
            _norm(nn.Conv1d(i, o, k, s, groups=math.gcd(g, i, o), padding=p), use_spectral_norm)
            for i, o, k, s, g, p in specs
        )
        self.conv_post = _norm(nn.Conv1d(1024 // d, 1, 3, 1, padding=1), use_spectral_norm)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """x [B, 1, T] -> (logits [B, N], 7 feature maps)."""
        return _run_conv_stack(self.convs, self.conv_post, x)


class PeriodDiscriminator(nn.Module):
    """RVC ``DiscriminatorP(period)``: the waveform folded to [B, 1, T/p, p], Conv2d (5, 1) stack."""

    def __init__(
        self,
        period: int,
        kernel_size: int = 5,
        stride: int = 3,
        use_spectral_norm: bool = False,
        channel_divisor: int = 1,
    ) -> None:
        super().__init__()
        self.period = period
        pad = (get_padding(kernel_size, 1), 0)
        d = channel_divisor
        chans = [(1, 32 // d, stride), (32 // d, 128 // d, stride), (128 // d, 512 // d, stride)]
        chans += [(512 // d, 1024 // d, stride), (1024 // d, 1024 // d, 1)]
        self.convs = nn.ModuleList(
            _norm(nn.Conv2d(i, o, (kernel_size, 1), (s, 1), padding=pad), use_spectral_norm) for i, o, s in chans
        )
        self.conv_post = _norm(nn.Conv2d(1024 // d, 1, (3, 1), 1, padding=(1, 0)), use_spectral_norm)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """x [B, 1, T] -> (logits [B, N], 6 feature maps)."""
        b, c, t = x.shape
        if t % self.period:
            n_pad = self.period - t % self.period
            x = F.pad(x, (0, n_pad), "reflect")
            t = t + n_pad
        x = x.view(b, c, t // self.period, self.period)
        return _run_conv_stack(self.convs, self.conv_post, x)


class MultiPeriodDiscriminator(nn.Module):
    """Scale discriminator + one period discriminator per period, evaluated on real and fake together."""

    def __init__(
        self,
        periods: Sequence[int] = (2, 3, 5, 7, 11, 17, 23, 37),
        use_spectral_norm: bool = False,
        channel_divisor: int = 1,
    ) -> None:
        """``channel_divisor`` > 1 divides every width (1, 2, 4, 8 or 16): small test models only, not RVC-compatible."""
        super().__init__()
        if channel_divisor not in (1, 2, 4, 8, 16):
            raise ValueError(f"channel_divisor must be one of 1, 2, 4, 8, 16, got {channel_divisor}")
        self.periods = tuple(periods)
        self.discriminators = nn.ModuleList(
            [ScaleDiscriminator(use_spectral_norm, channel_divisor)]
            + [
                PeriodDiscriminator(p, use_spectral_norm=use_spectral_norm, channel_divisor=channel_divisor)
                for p in self.periods
            ]
        )

    def forward(self, wav_real: Tensor, wav_fake: Tensor) -> DiscriminatorOutput:
        """wav_real, wav_fake [B, 1, T] -> (real logits, fake logits, real fmaps, fake fmaps), one per sub-D.

        Real and fake run as one concatenated batch (one pass per sub-discriminator).
        """
        batch = wav_real.shape[0]
        both = torch.cat([wav_real, wav_fake.to(wav_real.dtype)], dim=0)
        real_logits, fake_logits, real_fmaps, fake_fmaps = [], [], [], []
        for disc in self.discriminators:
            logits, fmap = disc(both)
            real_logits.append(logits[:batch])
            fake_logits.append(logits[batch:])
            real_fmaps.append([f[:batch] for f in fmap])
            fake_fmaps.append([f[batch:] for f in fmap])
        return real_logits, fake_logits, real_fmaps, fake_fmaps
