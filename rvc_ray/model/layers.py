"""Building blocks shared by the synthesizer and the discriminators (VITS / HiFi-GAN layers).

Parameter names (``in_layers``, ``res_skip_layers``, ``cond_layer``, ``convs1``, ``gamma`` ...) are the ones
RVC checkpoints use, so that state dicts load unchanged. Weight norm is the classic
``torch.nn.utils.weight_norm`` (parameters ``weight_g`` / ``weight_v``), as in RVC's ``f0G*.pth`` files.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "LRELU_SLOPE",
    "ChannelLayerNorm",
    "ResBlock1",
    "ResBlock2",
    "WaveNet",
    "apply_weight_norm",
    "get_padding",
    "rand_slice_segments",
    "sequence_mask",
    "slice_segments",
]

LRELU_SLOPE = 0.1


_PARAMETRIZED = ("parametrizations.weight.original0", "parametrizations.weight.original1")
_CLASSIC = ("weight_g", "weight_v")


def _state_dict_to_classic_names(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for new, old in zip(_PARAMETRIZED, _CLASSIC, strict=True):
        if prefix + new in state_dict:
            state_dict[prefix + old] = state_dict.pop(prefix + new)


def _load_classic_names(
    module: nn.Module,
    state_dict: dict,
    prefix: str,
    local_metadata: dict,
    strict: bool,
    missing_keys: list,
    unexpected_keys: list,
    error_msgs: list,
) -> None:
    for new, old in zip(_PARAMETRIZED, _CLASSIC, strict=True):
        if prefix + old in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)


def apply_weight_norm(module: nn.Module, init_std: float | None = None) -> nn.Module:
    """Weight norm whose state-dict keys are RVC's classic ``weight_g`` / ``weight_v``.

    Implemented with ``torch.nn.utils.parametrizations.weight_norm`` (deep-copyable, picklable) plus
    state-dict hooks that rename ``parametrizations.weight.original0/1`` to ``weight_g`` / ``weight_v`` on save
    and back on load, as Applio does; ``module.state_dict()`` / ``load_state_dict()`` speak RVC's names.
    The module's parameter order (bias, g, v) is the classic one, so RVC optimizer states line up.
    Optionally initialises the raw weight N(0, init_std) first (HiFi-GAN's intended init).
    """
    if init_std is not None:
        weight = module.weight
        assert isinstance(weight, Tensor)
        nn.init.normal_(weight, 0.0, init_std)
    torch.nn.utils.parametrizations.weight_norm(module, name="weight", dim=0)
    module.register_state_dict_post_hook(_state_dict_to_classic_names)
    module.register_load_state_dict_pre_hook(_load_classic_names)
    return module


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    """'Same' padding of an odd kernel with dilation."""
    return (kernel_size * dilation - dilation) // 2


def sequence_mask(lengths: Tensor, max_length: int | None = None) -> Tensor:
    """[B] lengths -> [B, max_length] bool mask (True on valid frames)."""
    if max_length is None:
        max_length = int(lengths.max())
    positions = torch.arange(max_length, dtype=lengths.dtype, device=lengths.device)
    return positions[None, :] < lengths[:, None]


def slice_segments(x: Tensor, starts: Tensor, segment_size: int) -> Tensor:
    """Gather ``x[b, ..., starts[b] : starts[b] + segment_size]`` for every item.

    Args:
        x: [B, C, T] or [B, T]; zero-padded on the right if a window runs past T.
        starts: [B] long start indices (>= 0).

    Returns:
        [B, C, segment_size] or [B, segment_size].
    """
    squeeze = x.dim() == 2
    if squeeze:
        x = x[:, None]
    needed = int(starts.max()) + segment_size if starts.numel() else segment_size
    if needed > x.shape[-1]:
        x = F.pad(x, (0, needed - x.shape[-1]))
    index = starts.to(x.device)[:, None] + torch.arange(segment_size, device=x.device)[None, :]
    index = index[:, None, :].expand(x.shape[0], x.shape[1], segment_size)
    out = torch.gather(x, 2, index)
    return out[:, 0] if squeeze else out


def rand_slice_segments(
    x: Tensor, lengths: Tensor, segment_size: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """RVC's random window: start = floor(U(0,1) * (length - segment_size + 1)), clamped at 0.

    Args:
        x: [B, C, F] frames; lengths: [B] valid frames.

    Returns:
        ([B, C, segment_size] slice, [B] long start frames).
    """
    max_start = (lengths - segment_size + 1).clamp(min=1).to(torch.float32)
    rand = torch.rand(lengths.shape[0], generator=generator, device="cpu").to(lengths.device)
    starts = (rand * max_start).to(torch.long).clamp(min=0)
    return slice_segments(x, starts, segment_size), starts


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of [B, C, T] (parameters ``gamma`` / ``beta``, eps 1e-5)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels, self.eps = channels, eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, T] -> [B, C, T]."""
        x = x.transpose(1, -1)
        x = F.layer_norm(x, (self.channels,), self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)


class WaveNet(nn.Module):
    """VITS ``WN``: non-causal gated dilated convs with a global condition, weight-normed.

    Keys: ``in_layers.N``, ``res_skip_layers.N``, ``cond_layer`` (when ``gin_channels > 0``).
    """

    def __init__(
        self,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
        p_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"WaveNet kernel_size must be odd, got {kernel_size}")
        self.hidden_channels, self.n_layers = hidden_channels, n_layers
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        self.drop = nn.Dropout(p_dropout)
        self.cond_layer = (
            apply_weight_norm(nn.Conv1d(gin_channels, 2 * hidden_channels * n_layers, 1)) if gin_channels else None
        )
        for i in range(n_layers):
            dilation = dilation_rate**i
            padding = get_padding(kernel_size, dilation)
            self.in_layers.append(
                apply_weight_norm(
                    nn.Conv1d(hidden_channels, 2 * hidden_channels, kernel_size, dilation=dilation, padding=padding)
                )
            )
            out = 2 * hidden_channels if i < n_layers - 1 else hidden_channels
            self.res_skip_layers.append(apply_weight_norm(nn.Conv1d(hidden_channels, out, 1)))

    def forward(self, x: Tensor, x_mask: Tensor, g: Tensor | None = None) -> Tensor:
        """x [B, H, T], x_mask [B, 1, T], g [B, gin, 1] -> [B, H, T]."""
        output = torch.zeros_like(x)
        hidden = self.hidden_channels
        cond = self.cond_layer(g) if (g is not None and self.cond_layer is not None) else None
        for i in range(self.n_layers):
            x_in = self.in_layers[i](x)
            if cond is not None:
                x_in = x_in + cond[:, i * 2 * hidden : (i + 1) * 2 * hidden, :]
            acts = torch.tanh(x_in[:, :hidden]) * torch.sigmoid(x_in[:, hidden:])
            acts = self.drop(acts)
            res_skip = self.res_skip_layers[i](acts)
            if i < self.n_layers - 1:
                x = (x + res_skip[:, :hidden]) * x_mask
                output = output + res_skip[:, hidden:]
            else:
                output = output + res_skip
        return output * x_mask


class ResBlock1(nn.Module):
    """HiFi-GAN ResBlock1: pairs (dilated conv, conv) with residuals; keys ``convs1.N`` / ``convs2.N``."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: Sequence[int] = (1, 3, 5)) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            apply_weight_norm(
                nn.Conv1d(channels, channels, kernel_size, 1, dilation=d, padding=get_padding(kernel_size, d)), 0.01
            )
            for d in dilation
        )
        self.convs2 = nn.ModuleList(
            apply_weight_norm(nn.Conv1d(channels, channels, kernel_size, 1, padding=get_padding(kernel_size)), 0.01)
            for _ in dilation
        )

    def forward(self, x: Tensor, x_mask: Tensor | None = None) -> Tensor:
        """[B, C, T] -> [B, C, T]."""
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            xt = F.leaky_relu(x, LRELU_SLOPE)
            if x_mask is not None:
                xt = xt * x_mask
            xt = c1(xt)
            xt = F.leaky_relu(xt, LRELU_SLOPE)
            if x_mask is not None:
                xt = xt * x_mask
            x = x + c2(xt)
        return x if x_mask is None else x * x_mask


class ResBlock2(nn.Module):
    """HiFi-GAN ResBlock2: one dilated conv per dilation with residuals; keys ``convs.N``."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: Sequence[int] = (1, 3)) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            apply_weight_norm(
                nn.Conv1d(channels, channels, kernel_size, 1, dilation=d, padding=get_padding(kernel_size, d)), 0.01
            )
            for d in dilation
        )

    def forward(self, x: Tensor, x_mask: Tensor | None = None) -> Tensor:
        """[B, C, T] -> [B, C, T]."""
        for conv in self.convs:
            xt = F.leaky_relu(x, LRELU_SLOPE)
            if x_mask is not None:
                xt = xt * x_mask
            x = x + conv(xt)
        return x if x_mask is None else x * x_mask
