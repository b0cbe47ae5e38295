"""What a sweep leaves behind: a per-trial table (CSV + JSON), a plot, and the best trial's artifacts.

:func:`collect_trial_records` turns Tune's ``ResultGrid`` into plain :class:`TrialRecord` rows; everything
else here works on those rows only, so it is testable without Ray.

Trial status:
    ``completed``      reported every epoch (``train.epochs``);
    ``early_stopped``  stopped by the scheduler (ASHA) or the sweep's time budget before the last epoch;
    ``failed``         raised (exception, out of memory, non-finite loss); ``error`` says why.

A trial's score is its metric at its **last** reported epoch (the epoch its latest checkpoint/voice
belongs to); the best trial is the one with the lowest score (``val/*`` metrics are lower-is-better).
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rvc_ray.config import RunConfig

__all__ = [
    "BestTrialFiles",
    "TrialRecord",
    "collect_trial_records",
    "copy_best_trial",
    "describe_error",
    "plot_results",
    "select_best",
    "write_best_config",
    "write_results_table",
]

TrialStatus = Literal["completed", "early_stopped", "failed"]
_ERROR_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Interrupt))\b:?(.*)$")


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a sweep, as written to ``results.csv`` / ``results.json``.

    ``metric_per_epoch[k - 1]`` is the metric of epoch ``k`` (NaN for an epoch whose report was lost).
    """

    trial_id: str
    status: TrialStatus
    config: dict[str, Any]
    metric_per_epoch: tuple[float, ...] = ()
    time_total_s: float | None = None
    error: str | None = None
    error_detail: str | None = None
    checkpoint_path: str | None = None
    voice_path: str | None = None
    trial_dir: str | None = None
    extra_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return len(self.metric_per_epoch)

    @property
    def score(self) -> float | None:
        """The metric at the last reported epoch (None when nothing finite was reported)."""
        if not self.metric_per_epoch or not math.isfinite(self.metric_per_epoch[-1]):
            return None
        return self.metric_per_epoch[-1]

    @property
    def best_metric(self) -> float | None:
        finite = [value for value in self.metric_per_epoch if math.isfinite(value)]
        return min(finite) if finite else None


def describe_error(error: BaseException | str | None) -> tuple[str | None, str | None]:
    """``(one-line reason, longer detail)`` of a trial's exception (Ray wrappers and tracebacks unwrapped)."""
    if error is None:
        return None, None
    cause = getattr(error, "cause", None) if isinstance(error, BaseException) else None
    root = cause if isinstance(cause, BaseException) else error
    text = str(root) if not isinstance(root, str) else root
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    reason = None
    for line in reversed(lines):
        match = _ERROR_LINE.match(line)
        if match:
            reason = f"{match.group(1).rsplit('.', 1)[-1]}:{match.group(2)}".strip().rstrip(":")
            break
    if reason is None:
        first = lines[0] if lines else ""
        reason = f"{type(root).__name__}: {first}" if isinstance(root, BaseException) else first
    reason = re.sub(r"\s+job_id=\S+.*$", "", reason)  # Ray appends log-context fields to the last line
    return reason[:500], text[-4000:]


def _status(metric_per_epoch: Sequence[float], error: str | None, max_epochs: int) -> TrialStatus:
    if error is not None:
        return "failed"
    return "completed" if len(metric_per_epoch) >= max_epochs else "early_stopped"


def collect_trial_records(
    result_grid: Iterable[Any],
    *,
    metric: str,
    max_epochs: int | Callable[[Mapping[str, Any]], int],
    paths: Sequence[str],
    train_run_dir_of: Callable[[str], Path] | None = None,
) -> list[TrialRecord]:
    """One :class:`TrialRecord` per Tune trial, ordered by trial id (= the order Tune created them).

    ``result_grid`` is Tune's ``ResultGrid`` (or any iterable of its ``Result`` objects).

    Args:
        metric: the scored metric (``cfg.tune.metric``), recorded for every epoch.
        max_epochs: ``train.epochs`` (or trial config -> epochs when it is searched); fewer reported
            epochs without an error = early stopped.
        paths: the searched config paths shown as the trial's config.
        train_run_dir_of: trial id -> the trial's Ray Train run directory (``voices/``, ``metrics.jsonl``).
            Its ``metrics.jsonl`` fills in epochs whose Tune report was lost (a trial restarted by a
            resumed sweep continues its Train checkpoint, but Tune restarts its result history).
    """
    records = []
    for result in result_grid:
        metrics = dict(result.metrics or {})
        trial_id = str(metrics.get("trial_id") or Path(result.path).name)
        frame = result.metrics_dataframe
        run_dir = train_run_dir_of(trial_id) if train_run_dir_of is not None else None
        by_epoch = _metric_from_jsonl(run_dir / "metrics.jsonl", metric) if run_dir is not None else {}
        by_epoch.update(_metric_from_frame(frame, metric))
        per_epoch = tuple(by_epoch.get(k, math.nan) for k in range(1, max(by_epoch, default=0) + 1))
        reason, detail = describe_error(result.error)
        sampled = result.config or metrics.get("config") or _read_params(Path(result.path))
        config = {path: sampled.get(path) for path in paths}
        checkpoint = _latest_checkpoint(frame)
        if checkpoint is None and result.checkpoint is not None:
            checkpoint = result.checkpoint.path
        voice = _latest_voice(run_dir / "voices") if run_dir is not None else None
        extras = {
            key: float(value)
            for key, value in metrics.items()
            if key.startswith(("val/", "loss/", "best/")) and isinstance(value, (int, float))
        }
        limit = max_epochs(config) if callable(max_epochs) else max_epochs
        records.append(
            TrialRecord(
                trial_id=trial_id,
                status=_status(per_epoch, reason, limit),
                config=config,
                metric_per_epoch=per_epoch,
                time_total_s=_float_or_none(metrics.get("time_total_s")),
                error=reason,
                error_detail=detail,
                checkpoint_path=str(checkpoint) if checkpoint else None,
                voice_path=str(voice) if voice else None,
                trial_dir=str(result.path),
                extra_metrics=extras,
            )
        )
    return sorted(records, key=lambda r: r.trial_id)


def _read_params(trial_dir: Path) -> dict[str, Any]:
    """A trial's sampled config from its ``params.json`` (a restored sweep's failed trials carry no config)."""
    path = trial_dir / "params.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _metric_from_frame(frame: Any, metric: str) -> dict[int, float]:
    """``{epoch: metric}`` from Tune's per-trial results (by the reported ``epoch``; repeats: last wins)."""
    if frame is None or metric not in frame.columns:
        return {}
    values = [float(v) for v in frame[metric].tolist()]
    epochs = frame["epoch"].tolist() if "epoch" in frame.columns else list(range(1, len(values) + 1))
    by_epoch: dict[int, float] = {}
    for epoch, value in zip(epochs, values, strict=True):
        if isinstance(epoch, (int, float)) and math.isfinite(epoch):
            by_epoch[int(epoch)] = value
    return by_epoch


def _metric_from_jsonl(path: Path, metric: str) -> dict[int, float]:
    """``{epoch: metric}`` from a training run's ``metrics.jsonl`` (``kind=epoch`` lines; repeats: last wins)."""
    if not path.is_file():
        return {}
    by_epoch: dict[int, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a killed worker
        if isinstance(record, dict) and record.get("kind") == "epoch" and isinstance(record.get(metric), (int, float)):
            by_epoch[int(record["epoch"])] = float(record[metric])
    return by_epoch


def _latest_checkpoint(frame: Any) -> str | None:
    """The last reported Train checkpoint (``checkpoint_path`` from TuneReportCallback) that still exists."""
    if frame is None or "checkpoint_path" not in frame.columns:
        return None
    for value in reversed(frame["checkpoint_path"].tolist()):
        if isinstance(value, str) and value and Path(value).is_dir():
            return value
    return None


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def _latest_voice(voices_dir: Path) -> Path | None:
    """The most recently exported ``<name>_e<E>_s<S>.pth`` of a trial (highest step), if any."""
    if not voices_dir.is_dir():
        return None
    candidates = sorted(voices_dir.glob("*.pth"), key=lambda p: (_step_of(p), p.stat().st_mtime))
    return candidates[-1] if candidates else None


def _step_of(path: Path) -> int:
    match = re.search(r"_s(\d+)\.pth$", path.name)
    return int(match.group(1)) if match else -1


def select_best(records: Iterable[TrialRecord]) -> TrialRecord | None:
    """The non-failed trial with the lowest score; ties go to the trial that ran more epochs."""
    scored = [r for r in records if r.status != "failed" and r.score is not None]
    if not scored:
        return None
    return min(scored, key=lambda r: (r.score, -r.epochs))


# --------------------------------------------------------------------------- table


def write_results_table(
    records: Sequence[TrialRecord], csv_path: Path, json_path: Path, *, metric: str, paths: Sequence[str]
) -> None:
    """Write one row per trial: status, searched values, ``<metric>@e<k>`` per epoch, time, error, files."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    max_epochs = max((r.epochs for r in records), default=0)
    epoch_columns = [f"{metric}@e{k}" for k in range(1, max_epochs + 1)]
    header = [
        "trial_id", "status", *paths, "epochs", f"{metric}@last", f"{metric}@best", *epoch_columns,
        "time_total_s", "error", "checkpoint_path", "voice_path",
    ]  # fmt: skip
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for r in records:
            per_epoch = [_csv_number(v) for v in r.metric_per_epoch] + [""] * (max_epochs - r.epochs)
            writer.writerow(
                [
                    r.trial_id, r.status, *(_csv_value(r.config.get(p)) for p in paths), r.epochs,
                    _csv_number(r.score), _csv_number(r.best_metric), *per_epoch,
                    _csv_number(r.time_total_s), r.error or "", r.checkpoint_path or "", r.voice_path or "",
                ]
            )  # fmt: skip
    payload = {
        "metric": metric,
        "mode": "min",
        "searched_paths": list(paths),
        "trials": [
            {**asdict(r), "metric_per_epoch": [_json_number(v) for v in r.metric_per_epoch], "epochs": r.epochs,
             "score": r.score, "best_metric": r.best_metric}
            for r in records
        ],
    }  # fmt: skip
    json_path.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")


def _csv_number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _csv_value(value: Any) -> str:
    return "" if value is None else str(value)


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- plot


def plot_results(
    records: Sequence[TrialRecord],
    png_path: Path,
    *,
    metric: str,
    batch_path: str = "train.batch_size",
    c_adv_path: str = "loss.c_adv",
) -> Path:
    """PNG with three panels: score vs. batch size (colour = c_adv), score vs. c_adv (colour = batch size),
    and every trial's metric per epoch. Failed trials are drawn as red crosses on the x axis."""
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
        ax.set_ylabel(f"{metric} (last epoch, lower is better)")
        ax.grid(alpha=0.3)
        if ok or failed:
            ax.legend(fontsize=8)
    curves = axes[2]
    for r in records:
        if r.metric_per_epoch:
            label = ", ".join(f"{p.split('.')[-1]}={_short(r.config.get(p))}" for p in (batch_path, c_adv_path))
            curves.plot(range(1, r.epochs + 1), r.metric_per_epoch, marker="o", label=f"{label} [{r.status}]")
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
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
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


# --------------------------------------------------------------------------- best trial


@dataclass(frozen=True)
class BestTrialFiles:
    """Where the best trial's artifacts were copied (``<run>/tune/best/``)."""

    config_path: Path
    voice_path: Path | None
    checkpoint_path: Path | None


def write_best_config(cfg: RunConfig, record: TrialRecord, path: Path, *, metric: str) -> Path:
    """Write the winning trial's full config as a job YAML that ``load_run_config`` reads back.

    ``cfg`` is the trial's resolved config (base config with the sampled values applied); the file holds
    every section, so it retrains exactly that setting with ``rvc-ray train --config <path>``.
    """
    data = cfg.model_dump(mode="json")
    searched = ", ".join(f"{key}={value!r}" for key, value in record.config.items())
    header = (
        f"# Best trial of the sweep '{cfg.experiment.name}': trial {record.trial_id}, "
        f"{metric}={record.score:.6g} after {record.epochs} epoch(s) ({record.status}).\n"
        f"# Searched values: {searched}\n"
        "# Retrain it (features of the same run):\n"
        f"#   rvc-ray train --config {path}\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def copy_best_trial(record: TrialRecord, best_dir: Path, *, index_path: Path | None = None) -> tuple[Path | None, Path | None]:
    """Copy the best trial's latest voice (+ the index) and checkpoint into ``best_dir``.

    Returns ``(voice_path, checkpoint_path)`` of the copies (None where the trial had none).
    """
    best_dir.mkdir(parents=True, exist_ok=True)
    voice_copy = checkpoint_copy = None
    if record.voice_path and Path(record.voice_path).is_file():
        voice_copy = best_dir / Path(record.voice_path).name
        shutil.copy2(record.voice_path, voice_copy)
        sibling_index = Path(record.voice_path).with_suffix(".index")
        candidates = [p for p in (index_path, sibling_index) if p is not None]
        candidates += sorted(Path(record.voice_path).parent.glob("*.index"))
        for candidate in candidates:
            if candidate.is_file():
                shutil.copy2(candidate, best_dir / candidate.name)
                break
    if record.checkpoint_path and Path(record.checkpoint_path).is_dir():
        checkpoint_copy = best_dir / "checkpoint"
        if checkpoint_copy.exists():
            shutil.rmtree(checkpoint_copy)
        shutil.copytree(record.checkpoint_path, checkpoint_copy)
    return voice_copy, checkpoint_copy
