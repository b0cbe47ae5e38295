"""The RVC v1/v2 generator (VITS variant), with and without F0, state-dict compatible with RVC ``f0G*.pth``.

Sub-modules (docs/rvc-reference.md §5.1): ``emb_g`` speaker embedding, ``enc_p`` content encoder, ``enc_q`` posterior
encoder (training only), ``flow`` residual coupling flow, ``dec`` NSF-HiFi-GAN decoder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rvc_ray.model.decoder import HiFiGANDecoder
from rvc_ray.model.encoders import PosteriorEncoder, PriorEncoder
from rvc_ray.model.flows import ResidualCouplingBlock
from rvc_ray.model.layers import rand_slice_segments, slice_segments

__all__ = ["Synthesizer", "SynthesizerOutput"]

DEFAULT_NOISE_SCALE = 0.66666


@dataclass
class SynthesizerOutput:
    """Training forward result.

    Shapes: wav [B, 1, segment_frames * hop]; slice_starts [B] long (frame index of the window);
    z_p, logs_q, m_p, logs_p [B, inter, F]; z_mask [B, 1, F] (posterior mask); x_mask [B, 1, F] (prior mask).
    """

    wav: Tensor
    slice_starts: Tensor
    z_p: Tensor
    logs_q: Tensor
    m_p: Tensor
    logs_p: Tensor
    z_mask: Tensor
    x_mask: Tensor


class Synthesizer(nn.Module):
    """RVC generator. Explicit args only (build it from config with :func:`rvc_ray.model.build.build_generator`)."""

    def __init__(
        self,
        *,
        spec_channels: int,
        segment_frames: int,
        content_dim: int,
        inter_channels: int,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int,
        p_dropout: float,
        resblock: str,
        resblock_kernel_sizes: Sequence[int],
        resblock_dilation_sizes: Sequence[Sequence[int]],
        upsample_rates: Sequence[int],
        upsample_initial_channel: int,
        upsample_kernel_sizes: Sequence[int],
        spk_embed_dim: int,
        gin_channels: int,
        sample_rate: int,
        use_f0: bool = True,
        posterior_layers: int = 16,
        posterior_kernel_size: int = 5,
        flow_layers: int = 4,
        flow_wn_layers: int = 3,
        flow_kernel_size: int = 5,
        with_posterior_encoder: bool = True,
    ) -> None:
        super().__init__()
        self.hop_length = math.prod(upsample_rates)
        self.segment_frames = segment_frames
        self.sample_rate = sample_rate
        self.use_f0 = use_f0
        self.spec_channels = spec_channels
        self.content_dim = content_dim
        self.num_speakers = spk_embed_dim
        self.enc_p = PriorEncoder(
            content_dim,
            inter_channels,
            hidden_channels,
            filter_channels,
            n_heads,
            n_layers,
            kernel_size,
            p_dropout,
            use_f0=use_f0,
        )
        self.dec = HiFiGANDecoder(
            inter_channels,
            resblock,
            resblock_kernel_sizes,
            resblock_dilation_sizes,
            upsample_rates,
            upsample_initial_channel,
            upsample_kernel_sizes,
            gin_channels,
            sample_rate,
            use_source=use_f0,
        )
        self.enc_q: PosteriorEncoder | None = (
            PosteriorEncoder(
                spec_channels, inter_channels, hidden_channels, posterior_kernel_size, 1, posterior_layers, gin_channels
            )
            if with_posterior_encoder
            else None
        )
        self.flow = ResidualCouplingBlock(
            inter_channels, hidden_channels, flow_kernel_size, 1, flow_wn_layers, flow_layers, gin_channels
        )
        self.emb_g = nn.Embedding(spk_embed_dim, gin_channels)

    def remove_posterior_encoder(self) -> None:
        """Drop ``enc_q`` (inference only), as RVC does before exporting or loading a voice."""
        self.enc_q = None

    def _check_frames(self, content: Tensor, pitch_bins: Tensor | None, f0_hz: Tensor | None) -> None:
        frames = content.shape[1]
        if content.dim() != 3 or content.shape[2] != self.content_dim:
            raise ValueError(f"content must be [B, F, {self.content_dim}], got {tuple(content.shape)}")
        for name, value in (("pitch_bins", pitch_bins), ("f0_hz", f0_hz)):
            if self.use_f0 and value is not None and value.shape[-1] != frames:
                raise ValueError(f"{name} has {value.shape[-1]} frames but content has {frames}; align them first")

    def _speaker(self, speaker_id: Tensor) -> Tensor:
        if speaker_id.numel() and (int(speaker_id.min()) < 0 or int(speaker_id.max()) >= self.num_speakers):
            raise ValueError(
                f"speaker_id {speaker_id.tolist()} out of range: this generator has {self.num_speakers} speakers "
                f"(0..{self.num_speakers - 1})"
            )
        return self.emb_g(speaker_id).unsqueeze(-1)

    def forward(
        self,
        content: Tensor,
        content_lengths: Tensor,
        pitch_bins: Tensor | None,
        f0_hz: Tensor | None,
        spec: Tensor,
        spec_lengths: Tensor,
        speaker_id: Tensor,
    ) -> SynthesizerOutput:
        """Training forward.

        Args:
            content: [B, F, C]; content_lengths: [B]; pitch_bins: [B, F] long | None; f0_hz: [B, F] | None;
            spec: [B, n_freq, F]; spec_lengths: [B]; speaker_id: [B] long.
        """
        if self.enc_q is None:
            raise RuntimeError("this generator has no posterior encoder (inference-only); it cannot be trained")
        self._check_frames(content, pitch_bins, f0_hz)
        g = self._speaker(speaker_id)
        m_p, logs_p, x_mask = self.enc_p(content, pitch_bins if self.use_f0 else None, content_lengths)
        z, _m_q, logs_q, y_mask = self.enc_q(spec, spec_lengths, g)
        z_p = self.flow(z, y_mask, g=g)
        z_slice, starts = rand_slice_segments(z, spec_lengths, self.segment_frames)
        f0_slice = None
        if self.use_f0:
            if f0_hz is None:
                raise ValueError("this generator uses F0 (use_f0=True) but f0_hz is None")
            f0_slice = slice_segments(f0_hz, starts, self.segment_frames)
        wav = self.dec(z_slice, f0_slice, g=g)
        return SynthesizerOutput(wav, starts, z_p, logs_q, m_p, logs_p, y_mask, x_mask)

    @torch.no_grad()
    def infer(
        self,
        content: Tensor,
        content_lengths: Tensor,
        pitch_bins: Tensor | None,
        f0_hz: Tensor | None,
        speaker_id: Tensor,
        *,
        noise_scale: float = DEFAULT_NOISE_SCALE,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Content (+ pitch) -> waveform [B, 1, F * hop] (prior sample, reverse flow, decoder)."""
        self._check_frames(content, pitch_bins, f0_hz)
        g = self._speaker(speaker_id)
        m_p, logs_p, x_mask = self.enc_p(content, pitch_bins if self.use_f0 else None, content_lengths)
        if generator is None:
            eps = torch.randn_like(m_p)
        else:
            eps = torch.randn(m_p.shape, generator=generator, device=generator.device, dtype=m_p.dtype).to(m_p.device)
        z_p = (m_p + torch.exp(logs_p) * eps * noise_scale) * x_mask
        z = self.flow(z_p, x_mask, g=g, reverse=True)
        if self.use_f0 and f0_hz is None:
            raise ValueError("this generator uses F0 (use_f0=True) but f0_hz is None")
        return self.dec(z * x_mask, f0_hz if self.use_f0 else None, g=g, generator=generator)
