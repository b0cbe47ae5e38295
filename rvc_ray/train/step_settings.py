"""How a step runs: :class:`StepSettings` (precision, clipping, loss weights, health policy), the autocast
of the model forwards and the fp16 GradScaler. Re-exported by :mod:`rvc_ray.train.steps`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from rvc_ray.config import AudioConfig, LossConfig, RunConfig

__all__ = ["Precision", "StepSettings", "autocast_context", "build_grad_scaler", "resolve_precision"]


Precision = Literal["fp32", "bf16", "fp16"]


def resolve_precision(requested: str, device: str | torch.device) -> Precision:
    """``train.precision`` for this device: ``auto`` is bf16 on a CUDA GPU that supports it (compute
    capability >= 8.0: A100, H100, RTX 30xx and newer) and fp32 otherwise (older GPUs, CPU); an explicit
    choice is kept."""
    if requested in ("fp32", "bf16", "fp16"):
        return requested  # type: ignore[return-value]
    if requested != "auto":
        raise ValueError(f"unknown precision {requested!r}")
    target = torch.device(device)
    if target.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        return "bf16"
    return "fp32"


@dataclass(frozen=True)
class StepSettings:
    """Everything a step needs besides the models, optimizers and the batch."""

    precision: Precision
    grad_clip_norm: float | None
    loss: LossConfig
    audio: AudioConfig
    hop_length: int
    segment_frames: int
    device: str = "cpu"
    nonfinite_policy: Literal["raise", "skip"] = "raise"
    min_learning_rate: float = 0.0

    @classmethod
    def from_config(cls, cfg: RunConfig, device: str | torch.device = "cpu") -> StepSettings:
        """Read ``train.precision`` (``auto`` resolved for ``device``), ``optim.grad_clip_norm``/
        ``min_learning_rate``, ``loss``, ``audio``, ``model.segment_frames`` and ``train.nonfinite_loss_policy``."""
        return cls(
            precision=resolve_precision(cfg.train.precision, device),
            grad_clip_norm=cfg.optim.grad_clip_norm,
            loss=cfg.loss,
            audio=cfg.audio,
            hop_length=cfg.audio.hop_length,
            segment_frames=cfg.model.segment_frames,
            device=str(device),
            nonfinite_policy=cfg.train.nonfinite_loss_policy,
            min_learning_rate=cfg.optim.min_learning_rate,
        )


def build_grad_scaler(settings: StepSettings) -> torch.amp.GradScaler | None:
    """A CUDA GradScaler for ``precision="fp16"``; None otherwise (fp32 and bf16 need none)."""
    if settings.precision != "fp16":
        return None
    if torch.device(settings.device).type != "cuda":
        raise ValueError(f"precision fp16 needs a CUDA device (got {settings.device}); use bf16 or fp32 on CPU")
    return torch.amp.GradScaler("cuda")


@contextlib.contextmanager
def autocast_context(settings: StepSettings) -> Iterator[None]:
    """Autocast for the model forwards: none (fp32), bf16 (CPU or CUDA), fp16 (CUDA only)."""
    if settings.precision == "fp32":
        yield
        return
    device_type = torch.device(settings.device).type
    if settings.precision == "fp16" and device_type != "cuda":
        raise ValueError(f"precision fp16 needs a CUDA device (got {settings.device}); use bf16 or fp32 on CPU")
    dtype = torch.bfloat16 if settings.precision == "bf16" else torch.float16
    with torch.autocast(device_type=device_type, dtype=dtype):
        yield
