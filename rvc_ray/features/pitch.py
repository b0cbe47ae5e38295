"""Pitch (F0) extraction at 16 kHz, hop 160 (100 frames/s), and RVC's coarse 1..255 quantisation.

Methods (docs/rvc-reference.md §2.1): ``crepe`` / ``crepe-tiny`` (torchcrepe, weights bundled in the package),
``fcpe`` (torchfcpe, bundled ``fcpe_c_v001.pt``) and ``rmvpe`` (implemented in :mod:`.rmvpe`, loaded from
the local file ``features.rmvpe_path``). Every extractor maps ``wav_16k [N]`` to ``f0_hz [N//160 + 1]``
float32 with 0 = unvoiced (the classic/Applio convention, docs/rvc-reference.md §2.2), values in
``[f0_min, f0_max]`` otherwise.

torchcrepe and torchfcpe import ``torchaudio`` at module level, which is not installed (its PyPI build
does not load beside the CPU torch). :func:`import_torchcrepe` / :func:`import_torchfcpe` register a
minimal stand-in module first, only when the real import fails. rvc-ray never calls into it: we feed
16 kHz tensors, so torchcrepe's file loader (``torchcrepe.load.audio``) and torchfcpe's resampler
(``torchaudio.transforms.Resample``, used only for non-16 kHz input) are never reached; the stand-in
raises a clear error if anything ever does.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import sys
import types
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from rvc_ray.features.f0_methods import F0_METHODS

if TYPE_CHECKING:
    from rvc_ray.config import FeatureConfig

__all__ = [
    "F0_METHODS",
    "HOP_16K",
    "CrepePitchExtractor",
    "FcpePitchExtractor",
    "PitchExtractor",
    "build_pitch_extractor",
    "compute_pitch_bins",
    "expected_f0_frames",
    "import_torchcrepe",
    "import_torchfcpe",
]

HOP_16K = 160
_STUB_MARKER = "__rvc_ray_torchaudio_stand_in__"


@runtime_checkable
class PitchExtractor(Protocol):
    """Maps a 16 kHz waveform to F0 at 100 frames/s."""

    description: str

    def compute_f0(self, wav_16k: np.ndarray) -> np.ndarray:
        """``[N]`` float32 at 16 kHz -> ``f0_hz [N//160 + 1]`` float32, 0 = unvoiced."""
        ...


def expected_f0_frames(num_samples_16k: int) -> int:
    """Number of F0 frames for ``N`` samples at 16 kHz: ``N // 160 + 1`` (centred frames)."""
    return num_samples_16k // HOP_16K + 1


def compute_pitch_bins(f0_hz: np.ndarray, f0_min: float = 50.0, f0_max: float = 1100.0) -> np.ndarray:
    """RVC's coarse pitch (docs/rvc-reference.md §2.3): ``f0_hz [F]`` -> int32 ``[F]`` in 1..255, unvoiced (0 Hz) -> 1.

    ``rint((mel(f0) - mel(f0_min)) * 254 / (mel(f0_max) - mel(f0_min)) + 1)`` clipped to [1, 255], with
    ``mel(f) = 1127 ln(1 + f / 700)``. E.g. 50 -> 1, 100 -> 20, 200 -> 54, 440 -> 122, 1000 -> 238.
    """
    f0 = np.asarray(f0_hz, dtype=np.float64)
    mel_min = 1127.0 * np.log(1.0 + f0_min / 700.0)
    mel_max = 1127.0 * np.log(1.0 + f0_max / 700.0)
    mel = 1127.0 * np.log(1.0 + np.maximum(f0, 0.0) / 700.0)
    voiced = f0 > 0
    mel[voiced] = (mel[voiced] - mel_min) * 254.0 / (mel_max - mel_min) + 1.0
    mel[~voiced] = 1.0
    return np.clip(np.rint(mel), 1, 255).astype(np.int32)


# --------------------------------------------------------------------------- torchaudio stand-in


def _torchaudio_stand_in_error(*_args, **_kwargs):
    raise RuntimeError(
        "torchaudio is not installed; rvc-ray registered a stand-in module only so that torchcrepe/torchfcpe "
        "import. rvc-ray feeds them 16 kHz tensors and never uses their file loading or resampling helpers."
    )


@contextlib.contextmanager
def _torchaudio_stand_in() -> Iterator[None]:
    """Make ``import torchaudio`` succeed inside the block: the real package if it imports, else a stand-in.

    The stand-in is removed from ``sys.modules`` again on exit (the importing modules keep their own
    reference), so later ``find_spec("torchaudio")`` checks, e.g. transformers', still see no torchaudio.
    """
    if "torchaudio" in sys.modules:
        yield
        return
    try:
        import torchaudio  # noqa: F401

        yield
        return
    except Exception:  # noqa: BLE001 - ImportError, or OSError from a CUDA-linked build
        for name in [n for n in sys.modules if n == "torchaudio" or n.startswith("torchaudio.")]:
            del sys.modules[name]
    stub = types.ModuleType("torchaudio")
    stub.__doc__ = "rvc-ray stand-in for torchaudio (not installed): every call raises."
    stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
    setattr(stub, _STUB_MARKER, True)
    stub.load = _torchaudio_stand_in_error
    transforms = types.ModuleType("torchaudio.transforms")
    transforms.__spec__ = importlib.machinery.ModuleSpec("torchaudio.transforms", None)

    class Resample:
        def __init__(self, *args, **kwargs):
            _torchaudio_stand_in_error()

    transforms.Resample = Resample
    stub.transforms = transforms
    sys.modules["torchaudio"] = stub
    sys.modules["torchaudio.transforms"] = transforms
    try:
        yield
    finally:
        for name in ("torchaudio", "torchaudio.transforms"):
            if sys.modules.get(name) in (stub, transforms):
                del sys.modules[name]


def import_torchcrepe():
    """``import torchcrepe`` without torchaudio (see the module docstring)."""
    with _torchaudio_stand_in():
        import torchcrepe

    return torchcrepe


def import_torchfcpe():
    """``import torchfcpe`` without torchaudio (see the module docstring)."""
    with _torchaudio_stand_in():
        import torchfcpe

    return torchfcpe


def _fit_length(f0: np.ndarray, n_frames: int) -> np.ndarray:
    """Trim, or pad with the last value, to exactly ``n_frames``."""
    if len(f0) >= n_frames:
        return f0[:n_frames]
    pad_value = f0[-1] if len(f0) else 0.0
    return np.concatenate([f0, np.full(n_frames - len(f0), pad_value, dtype=f0.dtype)])


def _clamp_range(f0: np.ndarray, f0_min: float, f0_max: float) -> np.ndarray:
    f0 = np.nan_to_num(np.asarray(f0, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    f0[f0 < f0_min] = 0.0
    return np.minimum(f0, f0_max).astype(np.float32)


# --------------------------------------------------------------------------- extractors


class CrepePitchExtractor:
    """torchcrepe ``full``/``tiny``, called as Applio does (docs/rvc-reference.md §2.1).

    Viterbi decoding, periodicity median-filtered (3) and f0 mean-filtered (3); frames with periodicity
    below ``periodicity_threshold`` are unvoiced.
    """

    def __init__(
        self,
        capacity: str,
        *,
        f0_min: float,
        f0_max: float,
        periodicity_threshold: float = 0.1,
        device: str = "cpu",
        batch_size: int = 512,
    ):
        if capacity not in ("full", "tiny"):
            raise ValueError(f"torchcrepe capacity must be 'full' or 'tiny', got {capacity!r}")
        self._torchcrepe = import_torchcrepe()
        self.capacity = capacity
        self.f0_min, self.f0_max = f0_min, f0_max
        self.periodicity_threshold = periodicity_threshold
        self.device = device
        self.batch_size = batch_size
        self._torchcrepe.load.model(device, capacity)  # load the bundled weights once, here
        self.description = f"crepe-{capacity} (torchcrepe, bundled weights)"

    def compute_f0(self, wav_16k: np.ndarray) -> np.ndarray:
        import torch

        torchcrepe = self._torchcrepe
        n_frames = expected_f0_frames(len(wav_16k))
        audio = torch.tensor(np.asarray(wav_16k, dtype=np.float32))[None]
        if torchcrepe.infer.capacity != self.capacity:  # another extractor in this process swapped it
            torchcrepe.load.model(self.device, self.capacity)
        f0, periodicity = torchcrepe.predict(
            audio,
            16000,
            HOP_16K,
            self.f0_min,
            self.f0_max,
            model=self.capacity,
            batch_size=self.batch_size,
            device=self.device,
            return_periodicity=True,
        )
        periodicity = torchcrepe.filter.median(periodicity, 3)
        f0 = torchcrepe.filter.mean(f0, 3)
        f0[periodicity < self.periodicity_threshold] = 0.0
        out = _fit_length(f0[0].cpu().numpy().astype(np.float32), n_frames)
        return _clamp_range(out, self.f0_min, self.f0_max)


class FcpePitchExtractor:
    """torchfcpe's bundled model, ``local_argmax`` decoding, threshold 0.006 (docs/rvc-reference.md §2.1)."""

    def __init__(self, *, f0_min: float, f0_max: float, device: str = "cpu", threshold: float = 0.006):
        import io

        torchfcpe = import_torchfcpe()
        with contextlib.redirect_stdout(io.StringIO()):  # torchfcpe prints [INFO]/[WARN] config notes
            self.model = torchfcpe.spawn_bundled_infer_model(device=device)
        self.device = device
        self.f0_min, self.f0_max = f0_min, f0_max
        self.threshold = threshold
        self.description = "fcpe (torchfcpe, bundled fcpe_c_v001 weights)"

    def compute_f0(self, wav_16k: np.ndarray) -> np.ndarray:
        import torch

        n_frames = expected_f0_frames(len(wav_16k))
        audio = torch.tensor(np.asarray(wav_16k, dtype=np.float32), device=self.device)[None, :, None]
        with torch.inference_mode():
            f0 = self.model.infer(
                audio,
                sr=16000,
                decoder_mode="local_argmax",
                threshold=self.threshold,
                f0_min=self.f0_min,
                f0_max=self.f0_max,
                interp_uv=False,
            )
        out = _fit_length(f0.reshape(-1).float().cpu().numpy(), n_frames)
        return _clamp_range(out, self.f0_min, self.f0_max)


def build_pitch_extractor(method: str, features: FeatureConfig, device: str = "cpu") -> PitchExtractor:
    """The F0 extractor named by ``method`` (normally ``features.f0_method``), weights loaded once.

    Raises:
        ValueError: unknown method, or ``rmvpe`` without ``features.rmvpe_path``.
        FileNotFoundError: the configured ``rmvpe.pt`` does not exist.
    """
    common = {"f0_min": features.f0_min_hz, "f0_max": features.f0_max_hz, "device": device}
    if method == "crepe":
        return CrepePitchExtractor("full", periodicity_threshold=features.crepe_periodicity_threshold, **common)
    if method == "crepe-tiny":
        return CrepePitchExtractor("tiny", periodicity_threshold=features.crepe_periodicity_threshold, **common)
    if method == "fcpe":
        return FcpePitchExtractor(**common)
    if method == "rmvpe":
        from rvc_ray.features.rmvpe import RmvpePitchExtractor, load_rmvpe_network

        if features.rmvpe_path is None:
            raise ValueError(
                "f0 method 'rmvpe' needs the local RMVPE weights: set features.rmvpe_path to an rmvpe.pt file "
                "(RVC/Applio ship one), or choose features.f0_method=fcpe, crepe-tiny or crepe (bundled weights)"
            )
        network = load_rmvpe_network(features.rmvpe_path, device=device)
        return RmvpePitchExtractor(network, description=f"rmvpe ({features.rmvpe_path})", **common)
    raise ValueError(f"unknown f0 method {method!r}; expected one of {', '.join(F0_METHODS)}")
