"""Inference speed levers: weight norm folded at load, and the number format of synthesis (fp32, or
bf16 autocast where the CPU computes bf16 natively).

The HiFi-GAN decoder is most of a conversion's time (docs/benchmarks.md). On CPUs with AVX512-BF16 or
AMX, oneDNN runs its convolutions in bf16 about twice as fast as in fp32; the output stays within the
tolerance stated in docs/serving.md ("Speed and precision"). On CPUs without those instructions bf16 is
emulated and slower, so ``auto`` keeps fp32 there. On CUDA ``auto`` keeps fp32 (not measured here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

__all__ = ["PRECISIONS", "Precision", "autocast_dtype", "cpu_has_native_bf16", "fold_weight_norm"]

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU flags list AVX512-BF16 or AMX-BF16 (Linux; False where unknown)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return any(flag in flags for flag in _BF16_FLAGS)
    return False


def autocast_dtype(precision: str, device: str) -> str | None:
    """``"bfloat16"`` when synthesis should run under bf16 autocast on ``device``, else ``None`` (fp32).

    Raises:
        ValueError: an unknown ``precision``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return "bfloat16"
    return "bfloat16" if device == "cpu" and cpu_has_native_bf16() else None


def fold_weight_norm(generator: Any) -> int:
    """Fold every weight norm of ``generator`` into its plain weight (the same output, less work per call)."""
    from torch.nn.utils import parametrize

    if not hasattr(generator, "modules"):  # a stand-in generator (tests)
        return 0
    modules = [m for m in generator.modules() if parametrize.is_parametrized(m, "weight")]
    for module in modules:  # listed first: removing a parametrization swaps the module's class
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return len(modules)
