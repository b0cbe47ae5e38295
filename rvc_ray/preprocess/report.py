"""The readiness report: per-speaker figures and a verdict, as ``report.json`` and a readable ``report.txt``.

Written twice by :func:`rvc_ray.preprocess.run_preprocess`: first after the cheap readiness pass
(``"stage": "readiness"``, before any heavy work), then completed with the processing results
(``"stage": "final"``: segments per file and speaker, dropped segments by reason, files that gave no
segment and why). docs/dataset.md describes every field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rvc_ray.config import PreprocessConfig
from rvc_ray.preprocess.discovery import InputDiscovery
from rvc_ray.preprocess.inspection import FileInspection

__all__ = ["VERDICTS", "build_report", "compute_verdict", "format_report_text", "write_report"]

VERDICTS = ("ok", "warn", "insufficient")


def compute_verdict(usable_s: float, pp: PreprocessConfig) -> str:
    """``ok`` at or above ``warn_usable_minutes``, ``warn`` at or above ``min_usable_minutes``, else ``insufficient``."""
    minutes = usable_s / 60.0
    if minutes >= pp.warn_usable_minutes:
        return "ok"
    if minutes >= pp.min_usable_minutes:
        return "warn"
    return "insufficient"


def _weighted(values: Sequence[tuple[float | None, float]]) -> float | None:
    pairs = [(v, w) for v, w in values if v is not None and w > 0]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def _speaker_entry(speaker: Any, files: list[FileInspection], pp: PreprocessConfig) -> dict[str, Any]:
    good = [f for f in files if not f.is_bad]
    usable_s = sum(f.usable_s for f in good)
    return {
        "speaker_id": speaker.speaker_id,
        "name": speaker.name,
        "folders": list(speaker.folders),
        "assigned_by": speaker.assigned_by,
        "num_files": len(files),
        "num_bad_files": len(files) - len(good),
        "total_s": round(sum(f.duration_s for f in good), 3),
        "usable_s": round(usable_s, 3),
        "usable_minutes": round(usable_s / 60.0, 3),
        "sample_rates": sorted({f.sample_rate for f in good if f.sample_rate}),
        "clipping_ratio": _weighted([(f.clipping_ratio, f.duration_s) for f in good]),
        "silence_ratio": _weighted([(f.silence_ratio, f.duration_s) for f in good]),
        "snr_db": _weighted([(f.snr_db, f.duration_s) for f in good]),
        "verdict": compute_verdict(usable_s, pp),
    }


def build_report(
    discovery: InputDiscovery,
    inspections: Sequence[FileInspection],
    pp: PreprocessConfig,
    outcomes: Mapping[int, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The report as a JSON-ready dict; with ``outcomes`` (per source_index) it is the final report."""
    speakers = []
    for speaker in discovery.speakers:
        files = [f for f in inspections if f.speaker_id == speaker.speaker_id]
        speakers.append(_speaker_entry(speaker, files, pp))
    file_entries = []
    bad_files = [{"path": f.path, "reason": f.bad_reason} for f in inspections if f.is_bad]
    for inspection in inspections:
        entry = inspection.to_json()
        outcome = (outcomes or {}).get(inspection.source_index)
        if outcome is not None:
            entry["processing"] = dict(outcome)
            if outcome.get("error"):
                bad_files.append({"path": inspection.path, "reason": outcome["error"]})
        file_entries.append(entry)
    worst = max((VERDICTS.index(s["verdict"]) for s in speakers), default=VERDICTS.index("insufficient"))
    report: dict[str, Any] = {
        "stage": "final" if outcomes is not None else "readiness",
        "verdict": VERDICTS[worst],
        "thresholds": {
            "min_usable_minutes": pp.min_usable_minutes,
            "warn_usable_minutes": pp.warn_usable_minutes,
            "min_file_duration_s": pp.min_file_duration_s,
            "slicer_threshold_db": pp.slicer_threshold_db,
            "clipping_level": pp.clipping_level,
        },
        "totals": {
            "num_files": len(inspections),
            "num_bad_files": len(bad_files),
            "num_skipped_files": len(discovery.skipped),
            "total_s": round(sum(s["total_s"] for s in speakers), 3),
            "usable_s": round(sum(s["usable_s"] for s in speakers), 3),
        },
        "speakers": speakers,
        "bad_files": bad_files,
        "skipped_files": [{"path": str(s.path), "reason": s.reason} for s in discovery.skipped],
        "files": file_entries,
    }
    if outcomes is not None:
        _add_processing_totals(report, outcomes)
    return report


def _add_processing_totals(report: dict[str, Any], outcomes: Mapping[int, Mapping[str, Any]]) -> None:
    dropped: dict[str, int] = {}
    for outcome in outcomes.values():
        for reason, count in outcome.get("dropped", {}).items():
            dropped[reason] = dropped.get(reason, 0) + int(count)
    per_speaker: dict[int, list[Mapping[str, Any]]] = {}
    for entry in report["files"]:
        if "processing" in entry:
            per_speaker.setdefault(entry["speaker_id"], []).append(entry["processing"])
    for speaker in report["speakers"]:
        done = per_speaker.get(speaker["speaker_id"], [])
        speaker["num_segments"] = sum(int(o["num_segments"]) for o in done)
        speaker["segment_seconds"] = round(sum(float(o["segment_seconds"]) for o in done), 3)
    report["totals"]["num_segments"] = sum(int(o["num_segments"]) for o in outcomes.values())
    report["totals"]["segment_seconds"] = round(sum(float(o["segment_seconds"]) for o in outcomes.values()), 3)
    report["totals"]["dropped_segments"] = dict(sorted(dropped.items()))
    report["files_without_segments"] = [
        {"path": e["path"], "reason": e["processing"]["zero_segment_reason"]}
        for e in report["files"]
        if "processing" in e and e["processing"].get("zero_segment_reason")
    ]


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_report_text(report: Mapping[str, Any]) -> str:
    """A fixed-width table of the speakers plus the lists of bad, skipped and segment-less files."""
    t = report["thresholds"]
    lines = [
        f"rvc-ray {report['stage']} report: verdict {report['verdict'].upper()} "
        f"(need >= {t['min_usable_minutes']} min usable audio per speaker, warn below {t['warn_usable_minutes']} min)",
        "",
        f"{'id':>3}  {'speaker':<16} {'files':>5} {'bad':>4} {'total':>9} {'usable':>9} {'clip%':>6} "
        f"{'silence%':>8} {'SNR dB':>6} {'segments':>8}  {'rates':<14} verdict",
    ]
    for s in report["speakers"]:
        clip = None if s["clipping_ratio"] is None else 100 * s["clipping_ratio"]
        silence = None if s["silence_ratio"] is None else 100 * s["silence_ratio"]
        rates = ",".join(str(r) for r in s["sample_rates"]) or "-"
        lines.append(
            f"{s['speaker_id']:>3}  {s['name'][:16]:<16} {s['num_files']:>5} {s['num_bad_files']:>4} "
            f"{s['total_s']:>8.1f}s {s['usable_s']:>8.1f}s {_fmt(clip, '.2f'):>6} {_fmt(silence, '.1f'):>8} "
            f"{_fmt(s['snr_db'], '.1f'):>6} {s.get('num_segments', '-'):>8}  {rates:<14} {s['verdict']}"
        )
    totals = report["totals"]
    lines.append(
        f"total: {totals['num_files']} audio files, {totals['total_s']:.1f} s, usable {totals['usable_s']:.1f} s"
        + (f", {totals['num_segments']} segments" if "num_segments" in totals else "")
    )
    if totals.get("dropped_segments"):
        lines.append("dropped segments: " + ", ".join(f"{k}={v}" for k, v in totals["dropped_segments"].items()))
    sections = [
        ("bad files (skipped)", report["bad_files"]),
        ("files without segments", report.get("files_without_segments", [])),
        ("not audio (skipped)", report["skipped_files"]),
    ]
    for title, items in sections:
        if items:
            lines += ["", f"{title} ({len(items)}):"] + [f"  {i['path']}: {i['reason']}" for i in items]
    warned = [(f["path"], w) for f in report["files"] for w in f.get("warnings", [])]
    if warned:
        lines += ["", f"warnings ({len(warned)}):"] + [f"  {path}: {w}" for path, w in warned]
    return "\n".join(lines) + "\n"


def write_report(report: Mapping[str, Any], output_dir: Path | str) -> Path | str:
    """Write ``report.json`` and ``report.txt`` into ``output_dir`` (a local path or a URI, see
    :mod:`rvc_ray.storage`); returns the JSON file (a ``Path`` when local, the URI otherwise)."""
    from rvc_ray import storage

    location = storage.normalize_location(str(output_dir))
    json_path = storage.join(location, "report.json")
    storage.write_text(json_path, json.dumps(report, indent=2, sort_keys=False) + "\n")
    storage.write_text(storage.join(location, "report.txt"), format_report_text(report))
    return storage.as_local_or_uri(json_path)
