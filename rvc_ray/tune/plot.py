"""The sweep's picture: score vs. batch size and vs. c_adv, and every trial's metric per epoch."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from rvc_ray import storage
from rvc_ray.tune.results import TrialRecord

__all__ = ["plot_results"]


def plot_results(
    records: Sequence[TrialRecord],
    png_path: str,
    *,
    metric: str,
    batch_path: str = "train.batch_size",
    c_adv_path: str = "loss.c_adv",
) -> str:
    """PNG with three panels: score vs. batch size (colour = c_adv), score vs. c_adv (colour = batch size),
    and every trial's metric per epoch (a ring marks the scored epoch). Failed trials are drawn as red crosses
    on the x axis. ``png_path`` is a local path or a URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ok = [r for r in records if r.score is not None and r.status != "failed"]
    failed = [r for r in records if r not in ok]
    floor = min((r.score for r in ok if r.score is not None), default=0.0)
    markers = {"completed": "o", "early_stopped": "v"}
    for ax, x_path, colour_path in ((axes[0], batch_path, c_adv_path), (axes[1], c_adv_path, batch_path)):
        colours = [_as_float(r.config.get(colour_path)) for r in ok]
        finite_colours = [c for c in colours if math.isfinite(c)] or [0.0, 1.0]
        mappable = None
        for status, marker in markers.items():
            chosen = [(r, c) for r, c in zip(ok, colours, strict=True) if r.status == status]
            if chosen:
                mappable = ax.scatter(
                    [_as_float(r.config.get(x_path)) for r, _ in chosen], [r.score for r, _ in chosen],
                    c=[c for _, c in chosen], cmap="viridis", marker=marker, s=60,
                    vmin=min(finite_colours), vmax=max(finite_colours), label=status.replace("_", " "),
                )  # fmt: skip
        if mappable is not None:
            fig.colorbar(mappable, ax=ax, label=colour_path)
        if failed:
            ax.scatter([_as_float(r.config.get(x_path)) for r in failed], [floor] * len(failed), marker="x",
                       c="red", s=70, label="failed")  # fmt: skip
        _format_value_axis(ax, [_as_float(r.config.get(x_path)) for r in records])
        ax.set_xlabel(x_path)
        ax.set_ylabel(f"{metric} (scored epoch, lower is better)")
        ax.grid(alpha=0.3)
        if ok or failed:
            ax.legend(fontsize=8)
    curves = axes[2]
    for r in records:
        if r.metric_per_epoch:
            label = ", ".join(f"{p.split('.')[-1]}={_short(r.config.get(p))}" for p in (batch_path, c_adv_path))
            (line,) = curves.plot(
                range(1, r.epochs + 1), r.metric_per_epoch, marker="o", label=f"{label} [{r.status}]"
            )
            if r.scored is not None:
                curves.scatter([r.scored.epoch], [r.score], s=160, facecolors="none", edgecolors=line.get_color())
    from matplotlib.ticker import MaxNLocator

    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.set_xlabel("epoch")
    curves.set_ylabel(metric)
    curves.grid(alpha=0.3)
    if any(r.metric_per_epoch for r in records):
        curves.legend(fontsize=7)
    counts = {s: sum(r.status == s for r in records) for s in ("completed", "early_stopped", "failed")}
    fig.suptitle(f"{len(records)} trials: " + ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.items()))
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=100)
    plt.close(fig)
    storage.write_bytes(png_path, image.getvalue())
    return png_path


def _format_value_axis(ax: Any, values: Sequence[float]) -> None:
    """Log scale for positive values spanning > 50x; ticks at the values when there are only a few."""
    finite = sorted({v for v in values if math.isfinite(v)})
    if not finite:
        return
    if finite[0] > 0 and finite[-1] / finite[0] > 50:
        ax.set_xscale("log")
    if len(finite) <= 8:
        ax.set_xticks(finite)
        ax.set_xticklabels([f"{v:.3g}" for v in finite])
        ax.minorticks_off()


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
