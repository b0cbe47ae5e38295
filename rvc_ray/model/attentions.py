"""VITS relative-position Transformer encoder used by the content encoder (``enc_p.encoder``).

Keys per layer N: ``attn_layers.N.{conv_q,conv_k,conv_v,conv_o,emb_rel_k,emb_rel_v}``, ``norm_layers_1.N``,
``ffn_layers.N.{conv_1,conv_2}``, ``norm_layers_2.N`` (docs/rvc-reference.md §5.1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rvc_ray.model.layers import ChannelLayerNorm

__all__ = ["FeedForward", "RelativeMultiHeadAttention", "TransformerEncoder"]


class RelativeMultiHeadAttention(nn.Module):
    """Multi-head self-attention with windowed relative position keys/values shared across heads."""

    def __init__(self, channels: int, out_channels: int, n_heads: int, p_dropout: float = 0.0, window_size: int = 10):
        super().__init__()
        if channels % n_heads:
            raise ValueError(f"channels ({channels}) must divide by n_heads ({n_heads})")
        self.n_heads, self.window_size = n_heads, window_size
        self.k_channels = channels // n_heads
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, out_channels, 1)
        self.drop = nn.Dropout(p_dropout)
        rel_std = self.k_channels**-0.5
        self.emb_rel_k = nn.Parameter(torch.randn(1, window_size * 2 + 1, self.k_channels) * rel_std)
        self.emb_rel_v = nn.Parameter(torch.randn(1, window_size * 2 + 1, self.k_channels) * rel_std)
        for conv in (self.conv_q, self.conv_k, self.conv_v):
            nn.init.xavier_uniform_(conv.weight)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        """x [B, C, T], attn_mask [B, 1, T, T] -> [B, out, T]."""
        q, k, v = self.conv_q(x), self.conv_k(x), self.conv_v(x)
        b, d, t = k.shape
        q = q.view(b, self.n_heads, self.k_channels, t).transpose(2, 3) / math.sqrt(self.k_channels)
        k = k.view(b, self.n_heads, self.k_channels, t).transpose(2, 3)
        v = v.view(b, self.n_heads, self.k_channels, t).transpose(2, 3)
        scores = torch.matmul(q, k.transpose(-2, -1))
        rel_k = self._relative_embeddings(self.emb_rel_k, t)
        rel_logits = torch.matmul(q, rel_k.unsqueeze(0).transpose(-2, -1))
        scores = scores + self._relative_to_absolute(rel_logits)
        scores = scores.masked_fill(attn_mask == 0, -1e4)
        p_attn = self.drop(F.softmax(scores, dim=-1))
        out = torch.matmul(p_attn, v)
        rel_v = self._relative_embeddings(self.emb_rel_v, t)
        out = out + torch.matmul(self._absolute_to_relative(p_attn), rel_v.unsqueeze(0))
        out = out.transpose(2, 3).contiguous().view(b, d, t)
        return self.conv_o(out)

    def _relative_embeddings(self, emb: Tensor, length: int) -> Tensor:
        pad = max(length - (self.window_size + 1), 0)
        start = max((self.window_size + 1) - length, 0)
        if pad > 0:
            emb = F.pad(emb, (0, 0, pad, pad, 0, 0))
        return emb[:, start : start + 2 * length - 1]

    @staticmethod
    def _relative_to_absolute(x: Tensor) -> Tensor:
        """[B, H, L, 2L-1] -> [B, H, L, L]."""
        b, h, length, _ = x.shape
        x = F.pad(x, (0, 1))
        flat = F.pad(x.reshape(b, h, length * 2 * length), (0, length - 1))
        return flat.view(b, h, length + 1, 2 * length - 1)[:, :, :length, length - 1 :]

    @staticmethod
    def _absolute_to_relative(x: Tensor) -> Tensor:
        """[B, H, L, L] -> [B, H, L, 2L-1]."""
        b, h, length, _ = x.shape
        x = F.pad(x, (0, length - 1))
        flat = F.pad(x.reshape(b, h, length**2 + length * (length - 1)), (length, 0))
        return flat.view(b, h, length, 2 * length)[:, :, :, 1:]


class FeedForward(nn.Module):
    """Masked conv FFN: conv_1 (k) -> ReLU -> conv_2 (k), 'same' padding."""

    def __init__(self, in_channels: int, out_channels: int, filter_channels: int, kernel_size: int, p_dropout: float):
        super().__init__()
        self.pad = ((kernel_size - 1) // 2, kernel_size // 2)
        self.conv_1 = nn.Conv1d(in_channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, out_channels, kernel_size)
        self.drop = nn.Dropout(p_dropout)

    def forward(self, x: Tensor, x_mask: Tensor) -> Tensor:
        """x [B, C, T], x_mask [B, 1, T] -> [B, out, T]."""
        x = self.conv_1(F.pad(x * x_mask, self.pad))
        x = self.drop(torch.relu(x))
        x = self.conv_2(F.pad(x * x_mask, self.pad))
        return x * x_mask


class TransformerEncoder(nn.Module):
    """Post-norm Transformer stack (attention, LayerNorm, FFN, LayerNorm) with relative positions."""

    def __init__(
        self,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int,
        p_dropout: float = 0.0,
        window_size: int = 10,
    ) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.drop = nn.Dropout(p_dropout)
        self.attn_layers = nn.ModuleList(
            RelativeMultiHeadAttention(hidden_channels, hidden_channels, n_heads, p_dropout, window_size)
            for _ in range(n_layers)
        )
        self.norm_layers_1 = nn.ModuleList(ChannelLayerNorm(hidden_channels) for _ in range(n_layers))
        self.ffn_layers = nn.ModuleList(
            FeedForward(hidden_channels, hidden_channels, filter_channels, kernel_size, p_dropout)
            for _ in range(n_layers)
        )
        self.norm_layers_2 = nn.ModuleList(ChannelLayerNorm(hidden_channels) for _ in range(n_layers))

    def forward(self, x: Tensor, x_mask: Tensor) -> Tensor:
        """x [B, H, T], x_mask [B, 1, T] -> [B, H, T]."""
        attn_mask = x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)
        x = x * x_mask
        for i in range(self.n_layers):
            y = self.drop(self.attn_layers[i](x, attn_mask))
            x = self.norm_layers_1[i](x + y)
            y = self.drop(self.ffn_layers[i](x, x_mask))
            x = self.norm_layers_2[i](x + y)
        return x * x_mask
