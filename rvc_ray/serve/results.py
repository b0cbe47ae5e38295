"""The ingress's bounded cache of converted results, and spectrogram pictures of audio.

A result is keyed by (voice content, input audio, options): the voice's ``cache_key`` (its id plus the
fingerprint of its files), the SHA-256 of the uploaded bytes and the options with defaults filled in.
Converting the same input with the same voice and options again costs nothing: the cached WAV is
returned. A replaced voice file has a new fingerprint, hence new keys. The cache is an LRU bounded in
bytes (``serve.result_cache_mb``); an evicted result's URL answers 404 ``result_not_found``.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

__all__ = ["ResultCache", "input_key", "render_spectrogram_png", "result_key"]

KEY_LENGTH = 32


def input_key(audio: bytes) -> str:
    """The key of an uploaded file: the first 32 hex digits of its SHA-256."""
    return hashlib.sha256(audio).hexdigest()[:KEY_LENGTH]


def result_key(voice_cache_key: str, input_id: str, options: dict[str, Any]) -> str:
    """The key of one conversion: voice content x input x options (defaults filled in)."""
    payload = json.dumps([voice_cache_key, input_id, options], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:KEY_LENGTH]


class ResultCache:
    """A thread-safe LRU of byte blobs (WAVs, PNGs) with their metadata, at most ``max_bytes`` in all."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[str, tuple[bytes, dict[str, Any]]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> tuple[bytes, dict[str, Any]] | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key: str, blob: bytes, meta: dict[str, Any] | None = None) -> None:
        """Store ``blob``; evicts the least recently used entries to stay under ``max_bytes``."""
        if len(blob) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._size -= len(old[0])
            self._items[key] = (blob, dict(meta or {}))
            self._size += len(blob)
            while self._size > self.max_bytes:
                _, (evicted, _) = self._items.popitem(last=False)
                self._size -= len(evicted)

    @property
    def size_bytes(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self._items)


def render_spectrogram_png(wav: np.ndarray, sample_rate: int, *, title: str = "") -> bytes:
    """A log-magnitude spectrogram of ``wav [N]`` as a PNG (0..8 kHz shown, dB colour scale).

    Uses matplotlib's object API (no pyplot state), so it is safe to call from worker threads.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from scipy import signal

    wav = np.asarray(wav, dtype=np.float32)
    n_fft = 1024 if sample_rate > 24000 else 512
    freqs, times, spec = signal.stft(wav, fs=sample_rate, nperseg=n_fft, noverlap=n_fft * 3 // 4)
    power_db = 20 * np.log10(np.abs(spec) + 1e-5)
    keep = freqs <= min(8000.0, sample_rate / 2)
    figure = Figure(figsize=(6.4, 2.4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    top = float(power_db.max()) if power_db.size else 0.0
    axes.pcolormesh(times, freqs[keep] / 1000, power_db[keep], shading="auto", vmin=top - 80, vmax=top, cmap="magma")
    axes.set_xlabel("time (s)")
    axes.set_ylabel("kHz")
    if title:
        axes.set_title(title, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
