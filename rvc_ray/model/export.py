"""Voices in RVC's small inference format: export after training, load for serving (docs/rvc-reference.md §6.8, §8 step 1).

An exported voice is ``torch.save`` of a dict with ``weight`` (generator state dict without ``enc_q.*``, fp16),
``config`` (RVC's 18-item list), ``info`` ("<E>epoch"), ``sr`` ("40k"; Applio writes 40000), ``f0`` (1/0) and
``version`` ("v2"), plus Applio's extra keys (``epoch``, ``step``, ``model_name``, ``creation_date``,
``model_hash``, ``vocoder``, ...). RVC-WebUI and Applio load these files; :func:`load_voice` loads theirs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rvc_ray.model.build import build_generator_from_rvc_config, rvc_config_list, sample_rate_from_rvc_value
from rvc_ray.model.weights import PretrainedMismatchError, normalize_state_dict, read_rvc_file

if TYPE_CHECKING:
    from rvc_ray.config import AudioConfig, ModelConfig
    from rvc_ray.model.synthesizer import Synthesizer

__all__ = ["LoadedVoice", "VoiceFormatError", "export_voice", "load_voice", "publish_voice"]

_RESERVED = {"weight", "config", "info", "sr", "f0", "version", "epoch", "step", "model_name", "creation_date"}
_RESERVED |= {"model_hash", "vocoder", "speakers_id", "content_dim", "exporter"}


class VoiceFormatError(PretrainedMismatchError):
    """A voice file that is not a loadable RVC inference model."""


@dataclass
class LoadedVoice:
    """A voice ready for ``generator.infer(...)``: eval mode, no posterior encoder, float32 weights."""

    generator: Synthesizer
    sample_rate: int
    version: str
    use_f0: bool
    num_speakers: int
    content_dim: int
    info: dict[str, Any] = field(default_factory=dict)


def _plain(value: Any, key: str) -> Any:
    """Values torch.load(weights_only=True) can read back: str/int/float/bool/None/list/dict (Path -> str)."""
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v, key) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v, key) for k, v in value.items()}
    raise TypeError(f"extra_info[{key!r}] holds a {type(value).__name__}; only plain JSON-like values can be exported")


def export_voice(
    gen_state_dict: Mapping[str, Tensor],
    model: ModelConfig,
    audio: AudioConfig,
    path: str | Path,
    *,
    epoch: int,
    step: int,
    name: str,
    extra_info: dict[str, Any] | None = None,
) -> Path:
    """Write a voice in RVC's inference format (fp16 weights without ``enc_q``); returns the path (atomic write).

    ``extra_info`` entries become top-level keys (e.g. ``embedder_model``, ``dataset_length``); reserved keys
    raise ValueError.
    """
    state = normalize_state_dict(gen_state_dict)
    for needed in ("emb_g.weight", "enc_p.emb_phone.weight", "dec.conv_post.weight"):
        if needed not in state:
            raise ValueError(f"export_voice: {needed!r} missing; this is not a generator state dict")
    weight = OrderedDict(
        (k, v.detach().to("cpu", torch.float16)) for k, v in state.items() if not k.startswith("enc_q.")
    )
    config = rvc_config_list(model, audio)
    sr = audio.sample_rate
    sr_name = f"{sr // 1000}k" if sr % 1000 == 0 else str(sr)
    digest = hashlib.sha256(json.dumps([name, epoch, step, sr, model.version, config]).encode()).hexdigest()
    payload: dict[str, Any] = {
        "weight": weight,
        "config": config,
        "info": f"{epoch}epoch",
        "sr": sr_name,
        "f0": 1 if model.use_f0 else 0,
        "version": model.version,
        "epoch": int(epoch),
        "step": int(step),
        "model_name": name,
        "creation_date": dt.datetime.now(dt.timezone.utc).isoformat(),
        "model_hash": digest,
        "vocoder": "HiFi-GAN",
        "speakers_id": model.spk_embed_dim,
        "content_dim": model.content_dim,
        "exporter": "rvc-ray",
    }
    for key, value in (extra_info or {}).items():
        if key in _RESERVED:
            raise ValueError(f"extra_info key {key!r} is reserved by the RVC voice format")
        payload[key] = _plain(value, key)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, target)
    return target


def publish_voice(
    local_voice: Path, voices_location: str, *, name: str, index_location: str | None = None
) -> str:
    """Put an exported voice (a local file) into ``voices_location`` (a local path or a URI).

    Writes ``<voices>/<local_voice.name>`` (unless the file is already there), ``<voices>/<name>.pth`` (the
    latest) and, when the index exists and is newer than the copy, ``<voices>/<name>.index``. Returns the
    location of the first.
    """
    from rvc_ray import storage

    voices = storage.normalize_location(voices_location)
    target = storage.join(voices, local_voice.name)
    if storage.normalize_location(str(local_voice)) != target:
        storage.upload_file(local_voice, target)
    storage.upload_file(local_voice, storage.join(voices, f"{name}.pth"))
    if index_location and storage.exists(index_location):
        copy = storage.join(voices, f"{name}.index")
        if not storage.exists(copy) or storage.file_info(copy)[1] < storage.file_info(index_location)[1]:
            storage.write_bytes(copy, storage.read_bytes(index_location))
    return target


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) or (isinstance(value, str) and value.strip().isdigit()):
        return bool(int(value))
    raise ValueError(f"f0 flag {value!r} is not 0/1/True/False")


def _flow_sizes(weight: Mapping[str, Tensor], path: Path) -> dict[str, int]:
    """Flow depth / WaveNet layers / kernel from the weights (RVC's config list does not carry them)."""
    flows = sorted({int(k.split(".")[2]) for k in weight if k.startswith("flow.flows.")})
    if not flows:
        raise VoiceFormatError(f"{path.name}: weight has no flow.flows.* tensors; not an RVC generator")
    prefix = f"flow.flows.{flows[0]}.enc.in_layers."
    layers = {k[len(prefix) :].split(".")[0] for k in weight if k.startswith(prefix)}
    kernel = weight.get(f"{prefix}0.weight_v")
    return {
        "flow_layers": len(flows),
        "flow_wn_layers": len(layers),
        "flow_kernel_size": int(kernel.shape[-1]) if kernel is not None else 5,
    }


def load_voice(path: str | Path, device: str | torch.device = "cpu") -> LoadedVoice:
    """Load an exported voice (rvc-ray, RVC-WebUI or Applio; v1 or v2; with or without F0).

    Raises :class:`VoiceFormatError` naming the file and the problem (a training checkpoint instead of a
    voice, an unsupported Applio vocoder, missing or unexpected tensors).
    """
    path = Path(path)
    data = read_rvc_file(path)
    if "weight" not in data or "config" not in data:
        if "model" in data:
            raise VoiceFormatError(
                f"{path.name} is a training checkpoint (G_*.pth or a pretrained file), not an exported voice; "
                "export it first (rvc-ray export)"
            )
        raise VoiceFormatError(f"{path.name}: not an RVC voice (needs 'weight' and 'config'; has {sorted(data)[:10]})")
    vocoder = str(data.get("vocoder", "HiFi-GAN"))
    if vocoder != "HiFi-GAN":
        raise VoiceFormatError(
            f"{path.name} uses Applio's {vocoder!r} vocoder; rvc-ray only runs HiFi-GAN (NSF) voices"
        )
    weight = normalize_state_dict(data["weight"])
    for needed in ("emb_g.weight", "enc_p.emb_phone.weight"):
        if needed not in weight:
            raise VoiceFormatError(f"{path.name}: weight has no {needed!r}; not an RVC generator")
    has_pitch = "enc_p.emb_pitch.weight" in weight
    use_f0 = _flag(data["f0"]) if "f0" in data else has_pitch
    if use_f0 != has_pitch:
        raise VoiceFormatError(
            f"{path.name}: f0={data.get('f0')!r} but the weights {'have' if has_pitch else 'lack'} a pitch embedding"
        )
    content_dim = int(weight["enc_p.emb_phone.weight"].shape[1])
    num_speakers = int(weight["emb_g.weight"].shape[0])
    config = list(data["config"])
    try:
        sample_rate = sample_rate_from_rvc_value(config[-1])
        generator = build_generator_from_rvc_config(
            config, use_f0=use_f0, content_dim=content_dim, num_speakers=num_speakers, **_flow_sizes(weight, path)
        )
    except (ValueError, TypeError, IndexError) as exc:
        raise VoiceFormatError(f"{path.name}: bad 'config' list {config!r}: {exc}") from exc
    ignored = sorted(k for k in weight if k.startswith("enc_q."))
    state = {k: v.float() for k, v in weight.items() if not k.startswith("enc_q.")}
    expected = generator.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in set(state) & set(expected) if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise VoiceFormatError(
            f"{path.name}: weights do not fit its config: missing {missing[:6]}, unexpected {unexpected[:6]}, "
            f"wrong shape {sorted(wrong)[:6]}"
        )
    generator.load_state_dict(state, strict=True)
    generator.eval().to(device)
    info = {k: v for k, v in data.items() if k != "weight"}
    if ignored:
        info["ignored_keys"] = ignored
    version = str(data.get("version", "v1"))
    return LoadedVoice(generator, sample_rate, version, use_f0, num_speakers, content_dim, info)
