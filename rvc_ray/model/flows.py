"""Mean-only residual coupling flow between the posterior latent and the prior (``flow.flows.{0,2,4,6}``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rvc_ray.model.layers import WaveNet

__all__ = ["ChannelFlip", "ResidualCouplingBlock", "ResidualCouplingLayer"]


class ResidualCouplingLayer(nn.Module):
    """Affine coupling on half the channels; ``post`` is zero-initialised so the flow starts as identity."""

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
        mean_only: bool = True,
    ) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"coupling channels must be even, got {channels}")
        self.half_channels, self.mean_only = channels // 2, mean_only
        self.pre = nn.Conv1d(self.half_channels, hidden_channels, 1)
        self.enc = WaveNet(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels)
        self.post = nn.Conv1d(hidden_channels, self.half_channels * (1 if mean_only else 2), 1)
        nn.init.zeros_(self.post.weight)
        assert self.post.bias is not None
        nn.init.zeros_(self.post.bias)

    def forward(self, x: Tensor, x_mask: Tensor, g: Tensor | None = None, reverse: bool = False) -> Tensor:
        """x [B, C, T] -> [B, C, T] (forward: z -> z_p; reverse: z_p -> z)."""
        x0, x1 = torch.split(x, [self.half_channels] * 2, dim=1)
        h = self.pre(x0) * x_mask
        h = self.enc(h, x_mask, g=g)
        stats = self.post(h) * x_mask
        if self.mean_only:
            m, logs = stats, torch.zeros_like(stats)
        else:
            m, logs = torch.split(stats, [self.half_channels] * 2, dim=1)
        if not reverse:
            x1 = m + x1 * torch.exp(logs) * x_mask
        else:
            x1 = (x1 - m) * torch.exp(-logs) * x_mask
        return torch.cat([x0, x1], dim=1)


class ChannelFlip(nn.Module):
    """Reverse the channel order (no parameters)."""

    def forward(self, x: Tensor, x_mask: Tensor, g: Tensor | None = None, reverse: bool = False) -> Tensor:
        """[B, C, T] -> [B, C, T]."""
        return torch.flip(x, [1])


class ResidualCouplingBlock(nn.Module):
    """``n_flows`` x (coupling layer, flip): keys ``flows.{0,2,4,...}``."""

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        n_flows: int = 4,
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        self.flows = nn.ModuleList()
        for _ in range(n_flows):
            self.flows.append(
                ResidualCouplingLayer(
                    channels, hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels, mean_only=True
                )
            )
            self.flows.append(ChannelFlip())

    def forward(self, x: Tensor, x_mask: Tensor, g: Tensor | None = None, reverse: bool = False) -> Tensor:
        """x [B, C, T], x_mask [B, 1, T], g [B, gin, 1] -> [B, C, T]."""
        flows = reversed(self.flows) if reverse else self.flows
        for flow in flows:
            x = flow(x, x_mask, g=g, reverse=reverse)
        return x
