"""Config -> model objects. The only module that reads :class:`ModelConfig` / :class:`AudioConfig`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rvc_ray.model.discriminators import MultiPeriodDiscriminator
from rvc_ray.model.synthesizer import Synthesizer

if TYPE_CHECKING:
    from rvc_ray.config import AudioConfig, ModelConfig

__all__ = [
    "build_discriminator",
    "build_generator",
    "build_generator_from_rvc_config",
    "rvc_config_list",
    "sample_rate_from_rvc_value",
]

_SR_NAMES = {"24k": 24000, "32k": 32000, "40k": 40000, "44k": 44100, "48k": 48000}


def build_generator(model: ModelConfig, audio: AudioConfig, *, with_posterior_encoder: bool = True) -> Synthesizer:
    """The RVC generator described by the run's model and audio sections."""
    if math.prod(model.upsample_rates) != audio.hop_length:
        raise ValueError(
            f"model.upsample_rates {model.upsample_rates} multiply to {math.prod(model.upsample_rates)}, "
            f"but audio.hop_length is {audio.hop_length}"
        )
    return Synthesizer(
        spec_channels=audio.spec_channels,
        segment_frames=model.segment_frames,
        content_dim=model.content_dim,
        inter_channels=model.inter_channels,
        hidden_channels=model.hidden_channels,
        filter_channels=model.filter_channels,
        n_heads=model.n_heads,
        n_layers=model.n_layers,
        kernel_size=model.kernel_size,
        p_dropout=model.p_dropout,
        resblock=model.resblock,
        resblock_kernel_sizes=model.resblock_kernel_sizes,
        resblock_dilation_sizes=model.resblock_dilation_sizes,
        upsample_rates=model.upsample_rates,
        upsample_initial_channel=model.upsample_initial_channel,
        upsample_kernel_sizes=model.upsample_kernel_sizes,
        spk_embed_dim=model.spk_embed_dim,
        gin_channels=model.gin_channels,
        sample_rate=audio.sample_rate,
        use_f0=model.use_f0,
        posterior_layers=model.posterior_layers,
        posterior_kernel_size=model.posterior_kernel_size,
        flow_layers=model.flow_layers,
        flow_wn_layers=model.flow_wn_layers,
        flow_kernel_size=model.flow_kernel_size,
        with_posterior_encoder=with_posterior_encoder,
    )


def build_discriminator(model: ModelConfig, *, channel_divisor: int | None = None) -> MultiPeriodDiscriminator:
    """The multi-period discriminator (scale + ``model.discriminator_periods``).

    ``channel_divisor`` (default ``model.discriminator_channel_divisor``; 1 = RVC widths) shrinks every channel
    count for tiny models: with RVC widths the discriminator is ~22 M parameters even with 2 periods.
    """
    divisor = model.discriminator_channel_divisor if channel_divisor is None else channel_divisor
    return MultiPeriodDiscriminator(
        periods=model.discriminator_periods, use_spectral_norm=model.use_spectral_norm, channel_divisor=divisor
    )


def rvc_config_list(model: ModelConfig, audio: AudioConfig) -> list[Any]:
    """RVC's 18-item inference ``config`` list (docs/rvc-reference.md §6.8) for an exported voice."""
    return [
        audio.spec_channels,
        model.segment_frames,
        model.inter_channels,
        model.hidden_channels,
        model.filter_channels,
        model.n_heads,
        model.n_layers,
        model.kernel_size,
        model.p_dropout,
        model.resblock,
        list(model.resblock_kernel_sizes),
        [list(d) for d in model.resblock_dilation_sizes],
        list(model.upsample_rates),
        model.upsample_initial_channel,
        list(model.upsample_kernel_sizes),
        model.spk_embed_dim,
        model.gin_channels,
        audio.sample_rate,
    ]


def sample_rate_from_rvc_value(value: Any) -> int:
    """RVC's ``sr`` as written by RVC-WebUI ("40k") or Applio (40000) -> Hz."""
    if isinstance(value, bool):
        raise ValueError(f"sample rate {value!r} is not a number or an RVC name like '40k'")
    if isinstance(value, int | float):
        return int(value)
    text = str(value).strip().lower()
    if text in _SR_NAMES:
        return _SR_NAMES[text]
    if text.isdigit():
        return int(text)
    raise ValueError(f"sample rate {value!r} is not a number or one of {sorted(_SR_NAMES)}")


def build_generator_from_rvc_config(
    config: Sequence[Any],
    *,
    use_f0: bool,
    content_dim: int,
    num_speakers: int | None = None,
    sample_rate: int | None = None,
    flow_layers: int = 4,
    flow_wn_layers: int = 3,
    flow_kernel_size: int = 5,
) -> Synthesizer:
    """An inference generator (no ``enc_q``) from RVC's 18-item ``config`` list of an exported voice.

    ``num_speakers`` overrides ``config[-3]`` (RVC and Applio take it from ``emb_g.weight``), ``sample_rate``
    overrides ``config[-1]``. The flow sizes are not in RVC's list (RVC hard-codes 4 x 3 layers, kernel 5);
    pass them when the weights say otherwise. Raises ValueError when the list is malformed.
    """
    if len(config) != 18:
        raise ValueError(f"an RVC voice 'config' must have 18 items, got {len(config)}: {list(config)!r}")
    (
        spec_channels,
        segment_frames,
        inter,
        hidden,
        filter_ch,
        n_heads,
        n_layers,
        kernel_size,
        p_dropout,
        resblock,
        rb_kernels,
        rb_dilations,
        up_rates,
        up_initial,
        up_kernels,
        spk_embed_dim,
        gin,
        sr,
    ) = config
    return Synthesizer(
        spec_channels=int(spec_channels),
        segment_frames=int(segment_frames),
        content_dim=content_dim,
        inter_channels=int(inter),
        hidden_channels=int(hidden),
        filter_channels=int(filter_ch),
        n_heads=int(n_heads),
        n_layers=int(n_layers),
        kernel_size=int(kernel_size),
        p_dropout=float(p_dropout),
        resblock=str(resblock),
        resblock_kernel_sizes=[int(k) for k in rb_kernels],
        resblock_dilation_sizes=[[int(x) for x in d] for d in rb_dilations],
        upsample_rates=[int(u) for u in up_rates],
        upsample_initial_channel=int(up_initial),
        upsample_kernel_sizes=[int(k) for k in up_kernels],
        spk_embed_dim=int(num_speakers if num_speakers is not None else spk_embed_dim),
        gin_channels=int(gin),
        sample_rate=int(sample_rate if sample_rate is not None else sample_rate_from_rvc_value(sr)),
        use_f0=use_f0,
        flow_layers=flow_layers,
        flow_wn_layers=flow_wn_layers,
        flow_kernel_size=flow_kernel_size,
        with_posterior_encoder=False,
    )
