"""What a sweep leaves behind: a per-trial table (CSV + JSON) and the best trial's artifacts (plot: tune/plot.py).

:func:`collect_trial_records` turns Tune's ``ResultGrid`` into plain :class:`TrialRecord` rows; everything
else here works on those rows only, so it is testable without Ray.

Trial status:
    ``completed``      reported every epoch (``train.epochs``);
    ``early_stopped``  stopped by the scheduler (ASHA) or the sweep's time budget before the last epoch;
    ``failed``         raised (exception, out of memory, non-finite loss); ``error`` says why.

A trial is scored only at an epoch whose files exist: its score is the metric of its **latest saved
epoch** (an epoch for which the trial wrote a checkpoint and/or an exported voice, ``train.save_every_epochs``),
and ``best/`` receives exactly that epoch's voice and checkpoint. A metric reported for an epoch that was
not saved (an ASHA stop between saves, a report in flight when a trial was stopped) is shown in the table
but never scored, so the voice in ``best/`` is always the one the score belongs to. A trial with no saved
epoch has no score. The best trial is the one with the lowest score (``val/*`` metrics are lower-is-better).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from rvc_ray import storage
from rvc_ray.config import RunConfig

__all__ = [
    "SavedEpoch",
    "TrialRecord",
    "collect_trial_records",
    "copy_best_trial",
    "describe_error",
    "select_best",
    "write_best_config",
    "write_results_table",
]

TrialStatus = Literal["completed", "early_stopped", "failed"]
_ERROR_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Interrupt))\b:?(.*)$")


@dataclass(frozen=True)
class SavedEpoch:
    """An epoch whose files a trial wrote: its exported voice and/or its Ray Train checkpoint (locations)."""

    epoch: int
    voice_path: str | None = None
    checkpoint_path: str | None = None


@dataclass(frozen=True)
class TrialRecord:
    """One trial of a sweep, as written to ``results.csv`` / ``results.json``.

    ``metric_per_epoch[k - 1]`` is the metric of epoch ``k`` (NaN for an epoch whose report was lost);
    ``saved_epochs`` are the epochs whose files exist, in epoch order.
    """

    trial_id: str
    status: TrialStatus
    config: dict[str, Any]
    metric_per_epoch: tuple[float, ...] = ()
    time_total_s: float | None = None
    error: str | None = None
    error_detail: str | None = None
    saved_epochs: tuple[SavedEpoch, ...] = ()
    trial_dir: str | None = None
    extra_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return len(self.metric_per_epoch)

    def metric_at(self, epoch: int) -> float:
        """The metric of ``epoch`` (NaN when it was not reported)."""
        return self.metric_per_epoch[epoch - 1] if 1 <= epoch <= self.epochs else math.nan

    @property
    def scored(self) -> SavedEpoch | None:
        """The latest saved epoch with a finite metric: the epoch the score and ``best/`` belong to."""
        for saved in reversed(self.saved_epochs):
            if math.isfinite(self.metric_at(saved.epoch)):
                return saved
        return None

    @property
    def score(self) -> float | None:
        """The metric at :attr:`scored` (None when no saved epoch has a finite metric)."""
        return self.metric_at(self.scored.epoch) if self.scored is not None else None

    @property
    def last_metric(self) -> float | None:
        """The metric at the last reported epoch, saved or not (shown in the table, never scored)."""
        if not self.metric_per_epoch or not math.isfinite(self.metric_per_epoch[-1]):
            return None
        return self.metric_per_epoch[-1]

    @property
    def best_metric(self) -> float | None:
        finite = [value for value in self.metric_per_epoch if math.isfinite(value)]
        return min(finite) if finite else None

    @property
    def voice_path(self) -> str | None:
        return self.scored.voice_path if self.scored is not None else None

    @property
    def checkpoint_path(self) -> str | None:
        return self.scored.checkpoint_path if self.scored is not None else None


def describe_error(error: BaseException | str | None) -> tuple[str | None, str | None]:
    """``(one-line reason, longer detail)`` of a trial's exception (Ray wrappers and tracebacks unwrapped)."""
    if error is None:
        return None, None
    cause = getattr(error, "cause", None) if isinstance(error, BaseException) else None
    root = cause if isinstance(cause, BaseException) else error
    text = str(root) if not isinstance(root, str) else root
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    reason, at = None, 0
    for at in range(len(lines) - 1, -1, -1):
        match = _ERROR_LINE.match(lines[at])
        if match:
            reason = f"{match.group(1).rsplit('.', 1)[-1]}:{match.group(2)}".strip()
            break
    if reason is None:
        at, first = 0, lines[0] if lines else ""
        reason = f"{type(root).__name__}: {first}" if isinstance(root, BaseException) else first
    if reason.endswith(":") and at + 1 < len(lines):  # a header ("Training failed due to ... error:") + detail
        reason = f"{reason} {lines[at + 1].strip()}"
    reason = re.sub(r"\s+job_id=\S+.*$", "", reason.rstrip(":"))  # Ray appends log-context fields to the last line
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
    train_run_dir_of: Callable[[str], str] | None = None,
) -> list[TrialRecord]:
    """One :class:`TrialRecord` per Tune trial, ordered by trial id (= the order Tune created them).

    ``result_grid`` is Tune's ``ResultGrid`` (or any iterable of its ``Result`` objects).

    Args:
        metric: the scored metric (``cfg.tune.metric``), recorded for every epoch.
        max_epochs: ``train.epochs`` (or trial config -> epochs when it is searched); fewer reported
            epochs without an error = early stopped.
        paths: the searched config paths shown as the trial's config.
        train_run_dir_of: trial id -> the location of the trial's Ray Train run (``epoch_*/`` checkpoints,
            ``voices/``, ``metrics.jsonl``). Its files say which epochs were saved; its ``metrics.jsonl``
            fills in epochs whose Tune report was lost (a trial restarted by a resumed sweep continues its
            Train checkpoint, but Tune restarts its result history).
    """
    records = []
    for result in result_grid:
        metrics = dict(result.metrics or {})
        trial_id = str(metrics.get("trial_id") or Path(result.path).name)
        rows = _rows_by_epoch(result.metrics_dataframe)
        run_dir = train_run_dir_of(trial_id) if train_run_dir_of is not None else None
        by_epoch = _metric_from_jsonl(storage.join(run_dir, "metrics.jsonl"), metric) if run_dir else {}
        by_epoch.update({e: float(row[metric]) for e, row in rows.items() if _is_number(row.get(metric))})
        per_epoch = tuple(by_epoch.get(k, math.nan) for k in range(1, max(by_epoch, default=0) + 1))
        reason, detail = describe_error(result.error)
        sampled = result.config or metrics.get("config") or _read_params(Path(result.path))
        config = {path: sampled.get(path) for path in paths}
        limit = max_epochs(config) if callable(max_epochs) else max_epochs
        record = TrialRecord(
            trial_id=trial_id,
            status=_status(per_epoch, reason, limit),
            config=config,
            metric_per_epoch=per_epoch,
            time_total_s=_float_or_none(metrics.get("time_total_s")),
            error=reason,
            error_detail=detail,
            saved_epochs=_saved_epochs(run_dir) if run_dir else (),
            trial_dir=str(result.path),
        )
        scored_row = rows.get(record.scored.epoch, {}) if record.scored is not None else {}
        extras = {
            key: float(value)
            for key, value in scored_row.items()
            if key.startswith(("val/", "loss/", "best/")) and _is_number(value)
        }
        records.append(replace(record, extra_metrics=extras))
    return sorted(records, key=lambda r: r.trial_id)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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


def _rows_by_epoch(frame: Any) -> dict[int, dict[str, Any]]:
    """Tune's per-trial results by the reported ``epoch`` (a repeated epoch: the last report wins)."""
    if frame is None or "epoch" not in frame.columns:
        return {}
    rows: dict[int, dict[str, Any]] = {}
    for row in frame.to_dict("records"):
        epoch = row.get("epoch")
        if _is_number(epoch) and math.isfinite(epoch):
            rows[int(epoch)] = row
    return rows


def _metric_from_jsonl(location: str, metric: str) -> dict[int, float]:
    """``{epoch: metric}`` from a training run's ``metrics.jsonl`` (``kind=epoch`` lines; repeats: last wins)."""
    if not storage.exists(location):
        return {}
    by_epoch: dict[int, float] = {}
    for line in storage.read_text(location).splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a killed worker
        if isinstance(record, dict) and record.get("kind") == "epoch" and _is_number(record.get(metric)):
            by_epoch[int(record["epoch"])] = float(record[metric])
    return by_epoch


_VOICE_OF_EPOCH = re.compile(r"_e(\d+)_s(\d+)\.pth$")
_CHECKPOINT_DIR = re.compile(r"^epoch_(\d+)$")


def _saved_epochs(run_dir: str) -> tuple[SavedEpoch, ...]:
    """The epochs of a trial's Train run whose voice (``voices/<name>_e<E>_s<S>.pth``) or checkpoint
    (``epoch_<E>/``) exists, with their locations."""
    voices: dict[int, tuple[int, str]] = {}
    checkpoints: dict[int, str] = {}
    for location in storage.list_files(run_dir, recursive=True):
        relative = location[len(run_dir) :].lstrip("/\\").replace("\\", "/")
        parent, _, name = relative.rpartition("/")
        voice = _VOICE_OF_EPOCH.search(name) if parent == "voices" else None
        if voice is not None:
            epoch, step = int(voice.group(1)), int(voice.group(2))
            if epoch not in voices or step > voices[epoch][0]:  # a restarted epoch: the later export wins
                voices[epoch] = (step, location)
        checkpoint = _CHECKPOINT_DIR.match(parent)
        if checkpoint is not None:
            checkpoints[int(checkpoint.group(1))] = storage.join(run_dir, parent)
    return tuple(
        SavedEpoch(epoch, voices[epoch][1] if epoch in voices else None, checkpoints.get(epoch))
        for epoch in sorted(set(voices) | set(checkpoints))
    )


def _float_or_none(value: Any) -> float | None:
    return float(value) if _is_number(value) else None


def select_best(records: Iterable[TrialRecord]) -> TrialRecord | None:
    """The non-failed trial with the lowest score; ties go to the trial scored at a later epoch."""
    scored = [r for r in records if r.status != "failed" and r.scored is not None]
    if not scored:
        return None
    return min(scored, key=lambda r: (r.score, -(r.scored.epoch if r.scored is not None else 0)))


# --------------------------------------------------------------------------- table


def write_results_table(
    records: Sequence[TrialRecord], csv_path: str, json_path: str, *, metric: str, paths: Sequence[str]
) -> None:
    """Write one row per trial (to local paths or URIs): status, searched values, the scored epoch and its
    ``<metric>@scored``, ``<metric>@last`` (last reported epoch), ``<metric>@e<k>`` per epoch, time, error,
    and the scored epoch's files."""
    max_epochs = max((r.epochs for r in records), default=0)
    epoch_columns = [f"{metric}@e{k}" for k in range(1, max_epochs + 1)]
    header = [
        "trial_id", "status", *paths, "epochs", "scored_epoch", f"{metric}@scored", f"{metric}@last",
        f"{metric}@best", *epoch_columns, "time_total_s", "error", "checkpoint_path", "voice_path",
    ]  # fmt: skip
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(header)
    for r in records:
        per_epoch = [_csv_number(v) for v in r.metric_per_epoch] + [""] * (max_epochs - r.epochs)
        writer.writerow(
            [
                r.trial_id, r.status, *(_csv_value(r.config.get(p)) for p in paths), r.epochs,
                r.scored.epoch if r.scored is not None else "", _csv_number(r.score), _csv_number(r.last_metric),
                _csv_number(r.best_metric), *per_epoch, _csv_number(r.time_total_s), r.error or "",
                r.checkpoint_path or "", r.voice_path or "",
            ]
        )  # fmt: skip
    storage.write_text(csv_path, table.getvalue())
    payload = {
        "metric": metric,
        "mode": "min",
        "scoring": "the metric of each trial's latest saved epoch (files and score from the same epoch)",
        "searched_paths": list(paths),
        "trials": [
            {**asdict(r), "metric_per_epoch": [_json_number(v) for v in r.metric_per_epoch], "epochs": r.epochs,
             "scored_epoch": r.scored.epoch if r.scored is not None else None, "score": r.score,
             "last_metric": r.last_metric, "best_metric": r.best_metric}
            for r in records
        ],
    }  # fmt: skip
    storage.write_text(json_path, json.dumps(payload, indent=2, default=str))


def _csv_number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _csv_value(value: Any) -> str:
    return "" if value is None else str(value)


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- best trial


def write_best_config(cfg: RunConfig, record: TrialRecord, path: str, *, metric: str) -> str:
    """Write the winning trial's full config as a job YAML that ``load_run_config`` reads back.

    ``cfg`` is the trial's resolved config (base config with the sampled values applied); the file holds
    every section, so it retrains exactly that setting with ``rvc-ray train --config <path>``.
    """
    data = cfg.model_dump(mode="json")
    searched = ", ".join(f"{key}={value!r}" for key, value in record.config.items())
    scored_epoch = record.scored.epoch if record.scored is not None else None
    header = (
        f"# Best trial of the sweep '{cfg.experiment.name}': trial {record.trial_id}, "
        f"{metric}={record.score:.6g} at its saved epoch {scored_epoch} of {record.epochs} ({record.status}).\n"
        f"# Searched values: {searched}\n"
        "# Retrain it (features of the same run):\n"
        f"#   rvc-ray train --config {path}\n"
    )
    storage.write_text(path, header + yaml.safe_dump(data, sort_keys=False))
    return path


def copy_best_trial(
    record: TrialRecord, best_dir: str, *, index_path: str | None = None
) -> tuple[str | None, str | None]:
    """Copy the scored epoch's voice (+ the index) and checkpoint of ``record`` into ``best_dir``.

    Locations may be local paths or URIs. Returns ``(voice, checkpoint)`` locations of the copies (None
    where the scored epoch has none).
    """
    scored = record.scored
    voice_copy = checkpoint_copy = None
    if scored is not None and scored.voice_path is not None:
        voice_copy = storage.join(best_dir, _basename(scored.voice_path))
        storage.write_bytes(voice_copy, storage.read_bytes(scored.voice_path))
        voices_dir = scored.voice_path[: -len(_basename(scored.voice_path))].rstrip("/\\")
        candidates = [index_path] if index_path is not None else []
        candidates += storage.list_files(voices_dir, suffix=".index")
        for candidate in candidates:
            if candidate and storage.exists(candidate):
                storage.write_bytes(storage.join(best_dir, _basename(candidate)), storage.read_bytes(candidate))
                break
    if scored is not None and scored.checkpoint_path is not None:
        checkpoint_copy = storage.join(best_dir, "checkpoint")
        storage.remove(checkpoint_copy)
        root = scored.checkpoint_path.rstrip("/")
        for file in storage.list_files(root, recursive=True):
            relative = file[len(root) :].lstrip("/\\").replace("\\", "/")
            storage.write_bytes(storage.join(checkpoint_copy, *relative.split("/")), storage.read_bytes(file))
    return voice_copy, checkpoint_copy


def _basename(location: str) -> str:
    return location.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
