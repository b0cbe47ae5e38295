"""RVC weight files in and out: pretrained ``f0G*/f0D*.pth``, training checkpoints ``G_*.pth`` / ``D_*.pth``.

Both are ``torch.save`` of ``{"model": state_dict, ...}``; training checkpoints add ``"iteration"`` (the epoch),
``"optimizer"`` and ``"learning_rate"`` (docs/model.md, "Weight files"); optimizer state moves between the RVC
trainers' parameter orders by name (:mod:`rvc_ray.model.optimizer_order`). Files are read with ``weights_only=True``.
Before anything is loaded the file is checked against the run (v1/v2 content width, F0 or not, sample rate,
speaker rows, discriminator periods, every shape), and a mismatch raises :class:`PretrainedMismatchError`
with a message a user can act on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from rvc_ray.errors import InputError
from rvc_ray.features.state_dicts import find_state_dict_mismatch

if TYPE_CHECKING:
    from rvc_ray.config import AudioConfig, ModelConfig

__all__ = [
    "LoadReport",
    "ModuleLoadReport",
    "PretrainedMismatchError",
    "RVCCheckpoint",
    "check_discriminator_state",
    "check_generator_state",
    "describe_generator_sample_rate",
    "load_pretrained",
    "load_pretrained_module",
    "load_rvc_checkpoint",
    "normalize_state_dict",
    "read_rvc_file",
    "save_rvc_checkpoint",
]

log = logging.getLogger(__name__)

# decoder signature -> what it is: (ups kernel sizes, first noise-conv kernel or None for no-F0 files)
_KNOWN_DECODERS: dict[tuple[tuple[int, ...], int | None], str] = {
    ((20, 16, 4, 4), 64): "a 32 kHz (v2)",
    ((16, 16, 4, 4), 80): "a 40 kHz",
    ((24, 20, 4, 4), 80): "a 48 kHz (v2)",
    ((20, 12, 4, 4), 48): "a 24 kHz (Applio)",
    ((16, 16, 4, 4, 4), 64): "a 32 kHz (v1)",
    ((16, 16, 4, 4, 4), 96): "a 48 kHz (v1)",
    ((20, 16, 4, 4), None): "a 32 kHz (v2)",
    ((16, 16, 4, 4), None): "a 40 kHz",
    ((24, 20, 4, 4), None): "a 48 kHz (v2)",
    ((16, 16, 4, 4, 4), None): "a 32 or 48 kHz (v1)",
}


class PretrainedMismatchError(InputError):
    """A weight file does not fit the model this run builds."""


@dataclass
class ModuleLoadReport:
    """What happened when one file was loaded into one module."""

    path: Path
    kind: str  # "generator" | "discriminator"
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    epoch: int | None = None

    def summary(self) -> str:
        """One line for logs."""
        text = f"{self.kind} {self.path.name}: {len(self.loaded)} tensors loaded"
        if self.missing:
            text += f", {len(self.missing)} missing (kept at init: {', '.join(self.missing[:5])}...)"
        if self.unexpected:
            text += f", {len(self.unexpected)} unexpected (ignored: {', '.join(self.unexpected[:5])}...)"
        return text


@dataclass
class LoadReport:
    """Result of :func:`load_pretrained` (either entry is None when that file was not given)."""

    generator: ModuleLoadReport | None
    discriminator: ModuleLoadReport | None

    def summary(self) -> str:
        """Lines for logs."""
        return "\n".join(r.summary() for r in (self.generator, self.discriminator) if r is not None)


@dataclass
class RVCCheckpoint:
    """An RVC ``G_*.pth`` / ``D_*.pth`` (or pretrained file: no optimizer, epoch 0)."""

    model_state: dict[str, Tensor]
    optimizer_state: dict[str, Any] | None
    epoch: int
    learning_rate: float | None

    def __int__(self) -> int:
        """The epoch (``int(load_rvc_checkpoint(...))`` as RVC's ``load_checkpoint`` returns the iteration)."""
        return self.epoch


# --------------------------------------------------------------------------- reading


def _torch_load_reason(exc: Exception) -> str:
    """The one line of a ``torch.load`` error that says what is wrong (torch's weights-only text is a page)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        reason = text.split(marker, 1)[1].strip().split("\n")[0].strip()
        reason = reason.split(" was not an allowed global")[0]
        return f"{type(exc).__name__}: {reason or 'not a weights-only pickle'}"
    first = text.strip().split("\n")[0].split(". ")[0].strip()
    return f"{type(exc).__name__}: {first[:200]}"


def read_rvc_file(path: str | Path) -> dict[str, Any]:
    """``torch.load`` a .pth safely (``weights_only=True``, on CPU) with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weight file")
    with path.open("rb") as handle:
        head = handle.read(2)
    if head[:2] != b"PK" and head[:1] != b"\x80":
        raise PretrainedMismatchError(f"{path}: not a torch .pth file (neither a zip archive nor a pickle)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise PretrainedMismatchError(
            f"{path}: cannot be read as an RVC .pth ({_torch_load_reason(exc)}). rvc-ray reads weights with "
            "torch.load(weights_only=True) and does not unpickle arbitrary objects; if the file holds more than "
            "tensors and plain containers, re-save it with those only"
        ) from exc
    if not isinstance(data, Mapping):
        raise PretrainedMismatchError(f"{path}: expected a dict, got {type(data).__name__}")
    return dict(data)


def normalize_state_dict(state: Mapping[str, Any]) -> dict[str, Tensor]:
    """Strip a DDP ``module.`` prefix and map parametrized weight-norm names to ``weight_g`` / ``weight_v``."""
    out: dict[str, Tensor] = {}
    strip = bool(state) and all(k.startswith("module.") for k in state)
    for key, value in state.items():
        if strip:
            key = key[len("module.") :]
        key = key.replace("parametrizations.weight.original0", "weight_g")
        key = key.replace("parametrizations.weight.original1", "weight_v")
        out[key] = value
    return out


def _model_state_of(data: dict[str, Any], path: Path, role: str) -> dict[str, Tensor]:
    if "model" not in data:
        if "weight" in data and "config" in data:
            raise PretrainedMismatchError(
                f"{path.name} is an exported voice (inference weights without the posterior encoder), not a "
                f"{role} checkpoint; use a pretrained file such as f0G40k.pth/f0D40k.pth or a G_*.pth/D_*.pth"
            )
        raise PretrainedMismatchError(f"{path}: no 'model' entry (keys: {sorted(data)[:10]}); not an RVC checkpoint")
    return normalize_state_dict(data["model"])


def _kind_of(state: Mapping[str, Tensor]) -> str:
    if "enc_p.emb_phone.weight" in state or "dec.conv_pre.weight" in state:
        return "generator"
    if any(k.startswith("discriminators.") for k in state):
        return "discriminator"
    return "unknown"


def _unwrap(module: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return module.module if isinstance(module, DistributedDataParallel) else module


# --------------------------------------------------------------------------- checks


def _decoder_signature(state: Mapping[str, Tensor]) -> tuple[tuple[int, ...], int | None]:
    kernels = []
    i = 0
    while f"dec.ups.{i}.weight_v" in state or f"dec.ups.{i}.weight" in state:
        weight = state.get(f"dec.ups.{i}.weight_v", state.get(f"dec.ups.{i}.weight"))
        assert weight is not None  # the loop condition found one of the two keys
        kernels.append(int(weight.shape[-1]))
        i += 1
    noise = state.get("dec.noise_convs.0.weight")
    return tuple(kernels), (int(noise.shape[-1]) if noise is not None else None)


def describe_generator_sample_rate(state: Mapping[str, Tensor]) -> str:
    """'a 48 kHz (v2)' etc. from the decoder shapes of a generator state dict."""
    signature = _decoder_signature(state)
    return _KNOWN_DECODERS.get(signature, f"an unknown-rate (decoder kernels {signature[0]})")


def check_generator_state(
    state: Mapping[str, Tensor], expected: Mapping[str, Tensor], model: ModelConfig, audio: AudioConfig, name: str
) -> None:
    """Raise :class:`PretrainedMismatchError` when ``state`` (a file) cannot load into a model with ``expected``."""
    run = f"the run is {model.version} at {audio.sample_rate / 1000:g} kHz"
    kind = _kind_of(state)
    if kind != "generator":
        raise PretrainedMismatchError(f"{name} is a {kind} checkpoint, not a generator (swapped G and D files?)")
    phone = state.get("enc_p.emb_phone.weight")
    if phone is not None and int(phone.shape[1]) != model.content_dim:
        width = int(phone.shape[1])
        version = {256: "v1", 768: "v2"}.get(width, f"{width}-d")
        raise PretrainedMismatchError(
            f"{name} is a {version} generator ({width}-d content features) but {run} with "
            f"model.content_dim={model.content_dim}; use the matching pretrained files (e.g. pretrained_v2/f0G40k.pth)"
        )
    has_pitch = "enc_p.emb_pitch.weight" in state
    if has_pitch != model.use_f0:
        what = "a pitch-guided (F0) generator" if has_pitch else "a generator without F0 (G*.pth, not f0G*.pth)"
        raise PretrainedMismatchError(f"{name} is {what} but model.use_f0={str(model.use_f0).lower()}")
    if _decoder_signature(state) != _decoder_signature(expected):
        raise PretrainedMismatchError(
            f"{name} is {describe_generator_sample_rate(state)} generator but {run} "
            f"(decoder kernels {_decoder_signature(expected)[0]}); use the pretrained files for "
            f"{audio.sample_rate // 1000}k"
        )
    speakers = state.get("emb_g.weight")
    if speakers is not None and int(speakers.shape[0]) != model.spk_embed_dim:
        raise PretrainedMismatchError(
            f"{name} has {int(speakers.shape[0])} speaker embeddings but model.spk_embed_dim={model.spk_embed_dim}; "
            f"set model.spk_embed_dim={int(speakers.shape[0])} (RVC's pretrained files have 109)"
        )
    _check_shapes(state, expected, name)


def check_discriminator_state(
    state: Mapping[str, Tensor], expected: Mapping[str, Tensor], model: ModelConfig, name: str
) -> None:
    """Raise :class:`PretrainedMismatchError` when a discriminator file does not fit ``model``."""
    kind = _kind_of(state)
    if kind != "discriminator":
        raise PretrainedMismatchError(f"{name} is a {kind} checkpoint, not a discriminator (swapped G and D files?)")
    count = len({k.split(".")[1] for k in state if k.startswith("discriminators.")})
    wanted = len(model.discriminator_periods) + 1
    if count != wanted:
        hint = {9: " (RVC v2: periods 2..37)", 7: " (RVC v1: periods 2..17)"}.get(count, "")
        raise PretrainedMismatchError(
            f"{name} has {count} sub-discriminators{hint} but model.discriminator_periods "
            f"{model.discriminator_periods} needs {wanted}"
        )
    _check_shapes(state, expected, name)


def _check_shapes(state: Mapping[str, Tensor], expected: Mapping[str, Tensor], name: str) -> None:
    wrong = find_state_dict_mismatch(expected, state).wrong_shapes
    if wrong:
        more = f" (+{len(wrong) - 8} more)" if len(wrong) > 8 else ""
        raise PretrainedMismatchError(
            f"{name}: {len(wrong)} tensors have the wrong shape: {'; '.join(wrong[:8])}{more}"
        )


# --------------------------------------------------------------------------- loading


def _load_into(
    module: nn.Module, state: dict[str, Tensor], path: Path, kind: str, strict: bool, epoch: int | None
) -> ModuleLoadReport:
    target = _unwrap(module)
    expected = target.state_dict()
    expected_keys = set(expected)
    mismatch = find_state_dict_mismatch(expected, state)
    missing, unexpected = list(mismatch.missing), list(mismatch.unexpected)
    if strict and (missing or unexpected):
        raise PretrainedMismatchError(
            f"{path.name}: {len(missing)} tensors missing ({', '.join(missing[:6])}) and {len(unexpected)} unexpected "
            f"({', '.join(unexpected[:6])}) for this {kind}"
        )
    target.load_state_dict({k: v for k, v in state.items() if k in expected_keys}, strict=False)
    report = ModuleLoadReport(path, kind, sorted(expected_keys & set(state)), missing, unexpected, epoch)
    log.info(report.summary())
    return report


def load_pretrained_module(
    module: nn.Module,
    path: str | Path,
    *,
    model: ModelConfig | None = None,
    audio: AudioConfig | None = None,
    strict: bool = True,
) -> ModuleLoadReport:
    """Load one RVC file (pretrained or G_/D_ checkpoint) into a generator or discriminator, after checks.

    With ``model`` (and ``audio`` for a generator) the version / F0 / sample-rate / speaker checks give
    specific messages; without, only the role (G vs D) and the shapes are checked.
    """
    path = Path(path)
    data = read_rvc_file(path)
    expected = _unwrap(module).state_dict()
    kind = _kind_of(expected)
    state = _model_state_of(data, path, kind)
    if kind == "generator" and model is not None and audio is not None:
        check_generator_state(state, expected, model, audio, path.name)
    elif kind == "discriminator" and model is not None:
        check_discriminator_state(state, expected, model, path.name)
    else:
        if _kind_of(state) != kind:
            raise PretrainedMismatchError(f"{path.name} is a {_kind_of(state)} checkpoint, not a {kind}")
        _check_shapes(state, expected, path.name)
    epoch = int(data["iteration"]) if "iteration" in data else None
    return _load_into(module, state, path, kind, strict, epoch)


def load_pretrained(
    gen: nn.Module,
    disc: nn.Module | None,
    generator_path: str | Path | None = None,
    discriminator_path: str | Path | None = None,
    model: ModelConfig | None = None,
    audio: AudioConfig | None = None,
    *,
    strict: bool = True,
) -> LoadReport:
    """Load pretrained G and D (``{"model": sd}`` files; G_*/D_* checkpoints work too) after checking them.

    ``load_pretrained(gen, disc, "f0G40k.pth", "f0D40k.pth", cfg.model, cfg.audio) -> LoadReport``; one file
    into one module is :func:`load_pretrained_module`. Raises :class:`PretrainedMismatchError` (e.g.
    "f0G48k.pth is a 48 kHz (v2) generator but the run is v2 at 40 kHz ...") before touching any weight of
    either module.
    """
    g_state = d_state = None
    if generator_path is not None:  # check both files before loading either
        g_data = read_rvc_file(generator_path)
        g_state = _model_state_of(g_data, Path(generator_path), "generator")
        if model is not None and audio is not None:
            check_generator_state(g_state, _unwrap(gen).state_dict(), model, audio, Path(generator_path).name)
        else:
            _check_shapes(g_state, _unwrap(gen).state_dict(), Path(generator_path).name)
    if discriminator_path is not None and disc is not None:
        d_data = read_rvc_file(discriminator_path)
        d_state = _model_state_of(d_data, Path(discriminator_path), "discriminator")
        if model is not None:
            check_discriminator_state(d_state, _unwrap(disc).state_dict(), model, Path(discriminator_path).name)
        else:
            _check_shapes(d_state, _unwrap(disc).state_dict(), Path(discriminator_path).name)
    g_report = d_report = None
    if g_state is not None and generator_path is not None:
        g_report = _load_into(gen, g_state, Path(generator_path), "generator", strict, g_data.get("iteration"))
    if d_state is not None and disc is not None and discriminator_path is not None:
        d_report = _load_into(disc, d_state, Path(discriminator_path), "discriminator", strict, d_data.get("iteration"))
    return LoadReport(g_report, d_report)


# --------------------------------------------------------------------------- training checkpoints


def save_rvc_checkpoint(
    path: str | Path, module: nn.Module, optimizer: torch.optim.Optimizer | None, *, epoch: int, learning_rate: float
) -> Path:
    """Write an RVC ``G_*.pth`` / ``D_*.pth`` that rvc-ray, RVC-WebUI and Applio all resume from.

    Entries: ``"model"`` (classic ``weight_g``/``weight_v`` names, DDP ``module.`` stripped), ``"iteration"``
    (the epoch, as RVC stores it), ``"learning_rate"``, ``"optimizer"`` (None without an optimizer) and
    :data:`~rvc_ray.model.optimizer_order.STATE_BY_NAME_KEY`. The optimizer state is written so that both RVC
    parameter orders load it (see :mod:`rvc_ray.model.optimizer_order`). The write is atomic (temporary file +
    rename). Returns the path.
    """
    from rvc_ray.model.optimizer_order import STATE_BY_NAME_KEY, portable_optimizer_state

    target_module = _unwrap(module)
    payload: dict[str, Any] = {
        "model": normalize_state_dict(target_module.state_dict()),
        "iteration": int(epoch),
        "optimizer": None,
        "learning_rate": float(learning_rate),
    }
    if optimizer is not None:
        payload["optimizer"], payload[STATE_BY_NAME_KEY] = portable_optimizer_state(target_module, optimizer)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, target)
    return target


def load_rvc_checkpoint(
    path: str | Path,
    module: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    strict: bool = True,
) -> RVCCheckpoint:
    """Read an RVC ``G_*.pth`` / ``D_*.pth`` (or a pretrained file: no optimizer, epoch 0).

    With ``module`` (and ``optimizer``) the state is also loaded into them after a shape check; the optimizer
    state is mapped by parameter name, whichever trainer (rvc-ray, RVC-WebUI, Applio) wrote the file.
    ``int(result)`` is the saved epoch ("iteration"; RVC stores the epoch there).
    """
    path = Path(path)
    data = read_rvc_file(path)
    state = _model_state_of(data, path, "training")
    checkpoint = RVCCheckpoint(
        model_state=state,
        optimizer_state=data.get("optimizer"),
        epoch=int(data.get("iteration", 0)),
        learning_rate=None if data.get("learning_rate") is None else float(data["learning_rate"]),
    )
    if module is not None:
        expected = _unwrap(module).state_dict()
        kind = _kind_of(expected)
        if _kind_of(state) != kind:
            raise PretrainedMismatchError(f"{path.name} is a {_kind_of(state)} checkpoint, not a {kind}")
        _check_shapes(state, expected, path.name)
        _load_into(module, state, path, kind, strict, checkpoint.epoch)
    if optimizer is not None:
        if module is None:
            raise ValueError("load_rvc_checkpoint: an optimizer needs its module (the state is mapped by name)")
        if checkpoint.optimizer_state is None:
            raise PretrainedMismatchError(f"{path.name} has no optimizer state (a pretrained file, not G_/D_*.pth)")
        from rvc_ray.model.optimizer_order import optimizer_state_for

        try:
            optimizer.load_state_dict(optimizer_state_for(data, _unwrap(module), optimizer, path.name))
        except (ValueError, KeyError) as exc:
            raise PretrainedMismatchError(f"{path.name}: optimizer state does not fit this model: {exc}") from exc
    return checkpoint
