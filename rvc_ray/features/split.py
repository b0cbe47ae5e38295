"""Deterministic train/validation split by segment id, and mute-row ids (docs/rvc-reference.md §4.2).

Rule: a segment is ``val`` when ``sha1(segment_id)`` mapped to [0, 1) is below
``validation_fraction``. Per speaker, with ``validation_fraction > 0`` and at least 2 segments, at least
one segment is ``val`` (the one with the smallest hash, if the rule picked none) and at least one stays
``train`` (the largest hash, if the rule picked all). Speakers with a single segment keep it in
``train``. Mute rows are always ``train``. The split of a segment depends only on its id and the
fraction, except for those two per-speaker guarantees, which depend on the speaker's segment list.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable

__all__ = ["assign_splits", "compute_split_hash", "mute_segment_id"]


def compute_split_hash(segment_id: str) -> float:
    """``segment_id`` -> a uniform number in [0, 1) (first 8 bytes of SHA-1)."""
    digest = hashlib.sha1(segment_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def mute_segment_id(speaker_id: int, index: int) -> str:
    """Id of the ``index``-th mute row of a speaker: ``mute_<speaker>_<index:02d>``."""
    return f"mute_{speaker_id}_{index:02d}"


def assign_splits(rows: Iterable[tuple[str, int]], validation_fraction: float) -> dict[str, str]:
    """``(segment_id, speaker_id)`` pairs -> ``{segment_id: "train" | "val"}`` (see the module rule)."""
    by_speaker: dict[int, list[tuple[float, str]]] = defaultdict(list)
    for segment_id, speaker_id in rows:
        by_speaker[int(speaker_id)].append((compute_split_hash(segment_id), segment_id))
    splits: dict[str, str] = {}
    for items in by_speaker.values():
        items.sort()
        chosen = {sid: ("val" if h < validation_fraction else "train") for h, sid in items}
        if validation_fraction > 0 and len(items) >= 2:
            values = list(chosen.values())
            if "val" not in values:
                chosen[items[0][1]] = "val"
            if "train" not in values:
                chosen[items[-1][1]] = "train"
        elif len(items) < 2:
            chosen = {sid: "train" for _, sid in items}
        splits.update(chosen)
    return splits
