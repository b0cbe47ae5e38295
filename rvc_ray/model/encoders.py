"""The prior (content) encoder ``enc_p`` and the posterior (spectrogram) encoder ``enc_q`` (docs/rvc-reference.md §5.1)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rvc_ray.model.attentions import TransformerEncoder
from rvc_ray.model.layers import WaveNet, sequence_mask

__all__ = ["PosteriorEncoder", "PriorEncoder"]


class PriorEncoder(nn.Module):
    """Content features (+ coarse pitch) -> prior mean / log-std (RVC's ``TextEncoder768``).

    Keys: ``emb_phone``, ``emb_pitch`` (only with ``use_f0``), ``encoder.*``, ``proj``.
    """

    def __init__(
        self,
        content_dim: int,
        out_channels: int,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int,
        p_dropout: float,
        use_f0: bool = True,
        num_pitch_bins: int = 256,
    ) -> None:
        super().__init__()
        self.out_channels, self.hidden_channels = out_channels, hidden_channels
        self.emb_phone = nn.Linear(content_dim, hidden_channels)
        self.emb_pitch = nn.Embedding(num_pitch_bins, hidden_channels) if use_f0 else None
        self.encoder = TransformerEncoder(hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout)
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(self, content: Tensor, pitch_bins: Tensor | None, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """content [B, F, C], pitch_bins [B, F] long | None, lengths [B] -> (m_p, logs_p [B, inter, F], mask [B, 1, F])."""
        x = self.emb_phone(content)
        if self.emb_pitch is not None:
            if pitch_bins is None:
                raise ValueError("this generator uses F0 (use_f0=True) but pitch_bins is None")
            x = x + self.emb_pitch(pitch_bins)
        x = F.leaky_relu(x * math.sqrt(self.hidden_channels), 0.1)
        x = x.transpose(1, -1)
        x_mask = sequence_mask(lengths, x.shape[2]).unsqueeze(1).to(x.dtype)
        x = self.encoder(x * x_mask, x_mask)
        stats = self.proj(x) * x_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        return m, logs, x_mask


class PosteriorEncoder(nn.Module):
    """Linear spectrogram -> latent z ~ q(z | spec) (training only). Keys ``pre``, ``enc.*``, ``proj``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.pre = nn.Conv1d(in_channels, hidden_channels, 1)
        self.enc = WaveNet(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels)
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(self, spec: Tensor, lengths: Tensor, g: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """spec [B, n_freq, F], lengths [B], g [B, gin, 1] -> (z, m_q, logs_q [B, inter, F], mask [B, 1, F])."""
        x_mask = sequence_mask(lengths, spec.shape[2]).unsqueeze(1).to(spec.dtype)
        x = self.pre(spec) * x_mask
        x = self.enc(x, x_mask, g=g)
        stats = self.proj(x) * x_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        z = (m + torch.randn_like(m) * torch.exp(logs)) * x_mask
        return z, m, logs, x_mask
