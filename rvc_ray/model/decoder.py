"""NSF-HiFi-GAN decoder (``dec``): the harmonic-plus-noise source and the HiFi-GAN upsampler (docs/model.md).

With ``use_source=False`` it is RVC's plain HiFi-GAN ``Generator`` (the no-F0 variant: no ``m_source``,
no ``noise_convs``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rvc_ray.model.layers import LRELU_SLOPE, ResBlock1, ResBlock2, apply_weight_norm

__all__ = ["HarmonicNoiseSource", "HiFiGANDecoder", "SineGenerator"]


def _randn(shape: Sequence[int], like: Tensor, generator: torch.Generator | None) -> Tensor:
    if generator is None:
        return torch.randn(tuple(shape), dtype=like.dtype, device=like.device)
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=like.dtype).to(like.device)


class SineGenerator(nn.Module):
    """Frame-rate F0 -> sample-rate sines (fundamental + harmonics), voiced mask and additive noise.

    The phase is accumulated per frame (in-frame phase ``f0 / sr * (1..upp)`` plus the phase carried from the
    previous frames, modulo 1), as classic RVC and Applio do. No parameters.
    """

    def __init__(
        self,
        sample_rate: int,
        harmonic_num: int = 0,
        sine_amp: float = 0.1,
        noise_std: float = 0.003,
        voiced_threshold: float = 0.0,
    ) -> None:
        super().__init__()
        self.sample_rate, self.dim = sample_rate, harmonic_num + 1
        self.sine_amp, self.noise_std, self.voiced_threshold = sine_amp, noise_std, voiced_threshold

    @torch.no_grad()
    def forward(self, f0_hz: Tensor, upp: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """f0_hz [B, F] -> (sine_waves [B, F*upp, dim], uv [B, F*upp, 1])."""
        b, frames = f0_hz.shape
        f0 = f0_hz.to(torch.float64)
        harmonics = torch.arange(1, self.dim + 1, device=f0.device, dtype=torch.float64)
        rad = (f0[..., None] * harmonics / self.sample_rate) % 1.0  # [B, F, dim] cycles per sample
        frame_increment = (rad * upp) % 1.0
        carried = (torch.cumsum(frame_increment, dim=1) - frame_increment) % 1.0
        if self.dim > 1:
            initial = torch.rand(b, self.dim, generator=generator, device="cpu", dtype=torch.float64).to(f0.device)
            initial[:, 0] = 0.0
            carried = carried + initial[:, None, :]
        steps = torch.arange(1, upp + 1, device=f0.device, dtype=torch.float64)
        phase = carried[:, :, None, :] + rad[:, :, None, :] * steps[None, None, :, None]
        phase = phase.reshape(b, frames * upp, self.dim)
        out_dtype = f0_hz.dtype if f0_hz.is_floating_point() else torch.float32
        sines = (torch.sin(2 * math.pi * (phase % 1.0)) * self.sine_amp).to(out_dtype)
        uv = (f0_hz > self.voiced_threshold).to(out_dtype)
        uv = uv.repeat_interleave(upp, dim=1)[..., None]
        noise_amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
        noise = noise_amp * _randn(sines.shape, sines, generator)
        return sines * uv + noise, uv


class HarmonicNoiseSource(nn.Module):
    """RVC ``SourceModuleHnNSF``: sines merged by ``l_linear`` (Linear(harmonics+1 -> 1)) and tanh."""

    def __init__(self, sample_rate: int, harmonic_num: int = 0, sine_amp: float = 0.1, noise_std: float = 0.003):
        super().__init__()
        self.l_sin_gen = SineGenerator(sample_rate, harmonic_num, sine_amp, noise_std)
        self.l_linear = nn.Linear(harmonic_num + 1, 1)

    def forward(self, f0_hz: Tensor, upp: int, generator: torch.Generator | None = None) -> Tensor:
        """f0_hz [B, F] -> har_source [B, 1, F*upp]."""
        sines, _ = self.l_sin_gen(f0_hz, upp, generator)
        merged = torch.tanh(self.l_linear(sines.to(self.l_linear.weight.dtype)))
        return merged.transpose(1, 2)


class HiFiGANDecoder(nn.Module):
    """Latent frames -> waveform. Keys: ``conv_pre``, ``cond``, ``ups.N``, ``resblocks.N``, ``conv_post``,
    and with ``use_source``: ``m_source.l_linear``, ``noise_convs.N``.
    """

    def __init__(
        self,
        in_channels: int,
        resblock: str,
        resblock_kernel_sizes: Sequence[int],
        resblock_dilation_sizes: Sequence[Sequence[int]],
        upsample_rates: Sequence[int],
        upsample_initial_channel: int,
        upsample_kernel_sizes: Sequence[int],
        gin_channels: int,
        sample_rate: int,
        use_source: bool = True,
    ) -> None:
        super().__init__()
        if resblock not in ("1", "2"):
            raise ValueError(f"resblock must be '1' or '2', got {resblock!r}")
        self.num_kernels, self.num_upsamples = len(resblock_kernel_sizes), len(upsample_rates)
        self.upp = math.prod(upsample_rates)
        self.m_source = HarmonicNoiseSource(sample_rate) if use_source else None
        # registered before conv_pre as RVC-WebUI does (Applio: after ups); optimizer state in G_*.pth files is
        # mapped by parameter name, so both orders load (model/optimizer_order.py)
        self.noise_convs = nn.ModuleList() if use_source else None
        self.conv_pre = nn.Conv1d(in_channels, upsample_initial_channel, 7, 1, padding=3)
        block_cls = ResBlock1 if resblock == "1" else ResBlock2
        self.ups = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(upsample_rates, upsample_kernel_sizes, strict=True)):
            if (kernel - rate) % 2:
                raise ValueError(f"upsample stage {i}: kernel {kernel} - rate {rate} must be even")
            c_in, c_out = upsample_initial_channel // 2**i, upsample_initial_channel // 2 ** (i + 1)
            self.ups.append(
                apply_weight_norm(nn.ConvTranspose1d(c_in, c_out, kernel, rate, padding=(kernel - rate) // 2), 0.01)
            )
            if self.noise_convs is not None:
                if i + 1 < len(upsample_rates):
                    stride_f0 = math.prod(upsample_rates[i + 1 :])
                    if stride_f0 % 2:
                        raise ValueError(f"upsample stage {i}: the remaining upsampling {stride_f0} must be even")
                    self.noise_convs.append(
                        nn.Conv1d(1, c_out, kernel_size=stride_f0 * 2, stride=stride_f0, padding=stride_f0 // 2)
                    )
                else:
                    self.noise_convs.append(nn.Conv1d(1, c_out, kernel_size=1))
        self.resblocks = nn.ModuleList()
        for i in range(len(self.ups)):
            ch = upsample_initial_channel // 2 ** (i + 1)
            for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes, strict=True):
                self.resblocks.append(block_cls(ch, k, d))
        self.conv_post = nn.Conv1d(upsample_initial_channel // 2 ** len(upsample_rates), 1, 7, 1, padding=3, bias=False)
        self.cond = nn.Conv1d(gin_channels, upsample_initial_channel, 1) if gin_channels else None

    def forward(
        self, x: Tensor, f0_hz: Tensor | None, g: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """x [B, inter, S], f0_hz [B, S] (Hz, 0 = unvoiced; None without source), g [B, gin, 1] -> [B, 1, S*upp]."""
        har_source = None
        if self.m_source is not None:
            if f0_hz is None:
                raise ValueError("this decoder has an NSF source (use_f0=True) but f0_hz is None")
            har_source = self.m_source(f0_hz, self.upp, generator).to(x.dtype)
        x = self.conv_pre(x)
        if g is not None and self.cond is not None:
            x = x + self.cond(g)
        for i in range(self.num_upsamples):
            x = F.leaky_relu(x, LRELU_SLOPE)
            x = self.ups[i](x)
            if har_source is not None and self.noise_convs is not None:
                x = x + self.noise_convs[i](har_source)
            xs = self.resblocks[i * self.num_kernels](x)
            for j in range(1, self.num_kernels):
                xs = xs + self.resblocks[i * self.num_kernels + j](x)
            x = xs / self.num_kernels
        x = F.leaky_relu(x)
        return torch.tanh(self.conv_post(x))
