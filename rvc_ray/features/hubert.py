"""HuBERT / ContentVec inference in plain torch, under transformers' ``HubertModel`` state-dict names.

The content encoder every extraction actor and Serve replica builds. It computes what transformers'
``HubertModel`` (+ ContentVec/RVC's ``final_proj``) computes in eval mode, with the same parameter names, so
HF directories and converted fairseq checkpoints load into it unchanged; a test compares the two. It exists
because importing transformers' model code costs ~3 CPU-s per process (torch.distributed, dynamo and
transformers' own registries), paid by every actor of a CPU extraction (docs/benchmarks.md).

Shapes: ``wav [B, N]`` 16 kHz -> ``features [B, T, H]`` with ``T = expected_content_frames(N)`` (a 400-sample
field, stride 320 for the standard front end).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["HubertNetwork", "HubertShape"]


@dataclass(frozen=True)
class HubertShape:
    """The architecture fields of an HF ``config.json`` that inference needs (HuBERT-base defaults)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"
    feat_proj_layer_norm: bool = True
    do_stable_layer_norm: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5
    classifier_proj_size: int = 256
    masked_spec_embed: bool = True  # HF keeps this training-only vector when mask_time/feature_prob > 0

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> HubertShape:
        """From an HF HuBERT ``config.json`` dict (absent keys: HF's defaults).

        Raises:
            ValueError: a setting this network does not implement (activation, conv batch norm, adapters).
        """
        unsupported = {
            "hidden_act": config.get("hidden_act", "gelu") != "gelu",
            "feat_extract_activation": config.get("feat_extract_activation", "gelu") != "gelu",
            "conv_pos_batch_norm": bool(config.get("conv_pos_batch_norm", False)),
            "adapter_attn_dim": config.get("adapter_attn_dim") is not None,
            "feat_extract_norm": config.get("feat_extract_norm", "group") not in ("group", "layer"),
        }
        bad = [f"{key}={config.get(key)!r}" for key, is_bad in unsupported.items() if is_bad]
        if bad:
            raise ValueError(f"unsupported HuBERT config setting(s): {', '.join(bad)}")
        values: dict[str, Any] = {}
        for field in fields(cls):
            if field.name == "masked_spec_embed":
                values[field.name] = (
                    float(config.get("mask_time_prob", 0.05)) > 0 or float(config.get("mask_feature_prob", 0.0)) > 0
                )
            elif field.name in config:
                value = config[field.name]
                values[field.name] = tuple(int(v) for v in value) if isinstance(value, list | tuple) else value
        return cls(**values)


class _ConvLayer(nn.Module):
    """One front-end conv: ``[B, C_in, L] -> [B, C_out, L']``; norm ``group`` (layer 0 only), ``layer`` or none."""

    def __init__(self, shape: HubertShape, index: int):
        super().__init__()
        in_dim = shape.conv_dim[index - 1] if index > 0 else 1
        out_dim = shape.conv_dim[index]
        self.conv = nn.Conv1d(
            in_dim, out_dim, shape.conv_kernel[index], stride=shape.conv_stride[index], bias=shape.conv_bias
        )
        self.norm_kind = "layer" if shape.feat_extract_norm == "layer" else ("group" if index == 0 else None)
        self.layer_norm: nn.Module | None = None
        if self.norm_kind == "group":
            self.layer_norm = nn.GroupNorm(out_dim, out_dim, affine=True)
        elif self.norm_kind == "layer":
            self.layer_norm = nn.LayerNorm(out_dim, elementwise_affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm_kind == "group":
            x = self.layer_norm(x)  # type: ignore[misc]
        elif self.norm_kind == "layer":
            x = self.layer_norm(x.transpose(-2, -1)).transpose(-2, -1)  # type: ignore[misc]
        return F.gelu(x)


class _FeatureExtractor(nn.Module):
    def __init__(self, shape: HubertShape):
        super().__init__()
        self.conv_layers = nn.ModuleList(_ConvLayer(shape, i) for i in range(len(shape.conv_dim)))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """``[B, N] -> [B, C, T]``"""
        x = wav[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


class _FeatureProjection(nn.Module):
    def __init__(self, shape: HubertShape):
        super().__init__()
        self.has_layer_norm = shape.feat_proj_layer_norm
        if self.has_layer_norm:
            self.layer_norm = nn.LayerNorm(shape.conv_dim[-1], eps=shape.layer_norm_eps)
        self.projection = nn.Linear(shape.conv_dim[-1], shape.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, C] -> [B, T, H]``"""
        return self.projection(self.layer_norm(x) if self.has_layer_norm else x)


class _PositionalConv(nn.Module):
    """Grouped conv over time, weight-normalised over its kernel axis, one frame trimmed for even kernels."""

    def __init__(self, shape: HubertShape):
        super().__init__()
        kernel = shape.num_conv_pos_embeddings
        conv = nn.Conv1d(
            shape.hidden_size,
            shape.hidden_size,
            kernel_size=kernel,
            padding=kernel // 2,
            groups=shape.num_conv_pos_embedding_groups,
        )
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.trim = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, H] -> [B, T, H]``"""
        y = self.conv(x.transpose(1, 2))
        if self.trim:
            y = y[:, :, : -self.trim]
        return F.gelu(y).transpose(1, 2)


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden_size {hidden} is not divisible by num_attention_heads {heads}")
        self.heads, self.head_dim = heads, hidden // heads
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, H] -> [B, T, H]``"""
        batch, frames, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, frames, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.head_dim**-0.5)
        return self.out_proj(out.transpose(1, 2).reshape(batch, frames, -1))


class _FeedForward(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.intermediate_dense = nn.Linear(hidden, intermediate)
        self.output_dense = nn.Linear(intermediate, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(F.gelu(self.intermediate_dense(x)))


class _EncoderLayer(nn.Module):
    def __init__(self, shape: HubertShape):
        super().__init__()
        self.pre_norm = shape.do_stable_layer_norm
        self.attention = _Attention(shape.hidden_size, shape.num_attention_heads)
        self.layer_norm = nn.LayerNorm(shape.hidden_size, eps=shape.layer_norm_eps)
        self.feed_forward = _FeedForward(shape.hidden_size, shape.intermediate_size)
        self.final_layer_norm = nn.LayerNorm(shape.hidden_size, eps=shape.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attention(self.layer_norm(x))
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.attention(x))
        return self.final_layer_norm(x + self.feed_forward(x))


class _Encoder(nn.Module):
    def __init__(self, shape: HubertShape):
        super().__init__()
        self.pre_norm = shape.do_stable_layer_norm
        self.pos_conv_embed = _PositionalConv(shape)
        self.layer_norm = nn.LayerNorm(shape.hidden_size, eps=shape.layer_norm_eps)
        self.layers = nn.ModuleList(_EncoderLayer(shape) for _ in range(shape.num_hidden_layers))

    def forward(self, x: torch.Tensor, through_layer: int | None = None) -> torch.Tensor:
        """``[B, T, H] -> [B, T, H]``: the last layer's output, or layer ``through_layer``'s (1-based; the
        layers after it are not run; with ``do_stable_layer_norm`` the final layer norm is then not applied)."""
        x = x + self.pos_conv_embed(x)
        if not self.pre_norm:
            x = self.layer_norm(x)
        last = len(self.layers) if through_layer is None else through_layer
        for layer in self.layers[:last]:
            x = layer(x)
        if self.pre_norm and last == len(self.layers):
            x = self.layer_norm(x)
        return x


class HubertNetwork(nn.Module):
    """HuBERT / ContentVec for inference: ``wav [B, N] -> [B, T, hidden_size]`` (see the module docstring).

    ``final_proj`` (hidden -> ``classifier_proj_size``) is ContentVec/RVC v1's projection, applied by the
    caller to :meth:`forward` ``(through_layer=9)`` for v1 features.
    """

    def __init__(self, shape: HubertShape):
        super().__init__()
        self.shape = shape
        self.feature_extractor = _FeatureExtractor(shape)
        self.feature_projection = _FeatureProjection(shape)
        if shape.masked_spec_embed:  # unused at inference; kept so HF state dicts load strictly
            self.masked_spec_embed = nn.Parameter(torch.zeros(shape.hidden_size))
        self.encoder = _Encoder(shape)
        self.final_proj = nn.Linear(shape.hidden_size, shape.classifier_proj_size)

    @property
    def num_layers(self) -> int:
        return self.shape.num_hidden_layers

    def forward(self, wav: torch.Tensor, through_layer: int | None = None) -> torch.Tensor:
        """``wav [B, N]`` 16 kHz -> ``[B, T, H]``: the last layer's output or layer ``through_layer``'s."""
        features = self.feature_extractor(wav).transpose(1, 2)
        return self.encoder(self.feature_projection(features), through_layer)
