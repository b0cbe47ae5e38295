"""Content features: HuBERT-base / ContentVec (docs/rvc-reference.md §3).

The network is :class:`~rvc_ray.features.hubert.HubertNetwork`: transformers' ``HubertModel`` + ``final_proj``
computed in plain torch under the same parameter names (transformers itself is imported only to build the
random encoder). Three ways to get an encoder:

* a Hugging Face directory (Applio / RVC-WebUI HEAD): ``config.json`` + ``pytorch_model.bin`` or
  ``model.safetensors``;
* a fairseq checkpoint (RVC-WebUI classic ``hubert_base.pt``), converted by key mapping without fairseq;
* no path: a deterministic randomly initialised encoder (``features.random_encoder_size`` ``base`` =
  HuBERT-base sizes, ``tiny`` = hidden size ``model.content_dim``), seeded so every process builds the
  same weights. **Its features carry no learned content**: the demo pipeline runs end to end, but a
  voice trained on them cannot convert real speech. Its ``description`` says so, and so must every
  log line, manifest and export that uses it.

Output: v2 = last layer, v1 = ``final_proj`` of layer 9's output (transformers' ``hidden_states[9]``).
Shapes: ``wav_16k [N]`` -> ``[T50, C]`` float32 with ``T50 = (N - 400) // 320 + 1`` (50 frames/s).

Only load checkpoints you trust: fairseq files are Python pickles (see :func:`load_fairseq_state`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from rvc_ray.features.fairseq_pickle import FAIRSEQ_PICKLE, Placeholder, node_value, parse_conv_feature_layers
from rvc_ray.features.state_dicts import find_state_dict_mismatch

if TYPE_CHECKING:
    import torch

    from rvc_ray.config import FeatureConfig, ModelConfig
    from rvc_ray.features.hubert import HubertNetwork, HubertShape

__all__ = [
    "RANDOM_ENCODER_SEED",
    "ContentEncoder",
    "ContentEncoderInfo",
    "HubertContentEncoder",
    "build_content_encoder",
    "build_hubert_config",
    "convert_fairseq_to_hf_state",
    "convert_hf_to_fairseq_state",
    "describe_content_encoder",
    "expected_content_frames",
    "load_fairseq_state",
    "load_hf_encoder",
    "load_fairseq_encoder",
]

log = logging.getLogger(__name__)

RANDOM_ENCODER_SEED = 1_234_567
V1_OUTPUT_LAYER = 9
NO_CONTENT_WARNING = "features carry NO learned content (randomly initialised encoder: a pipeline demo only)"


@runtime_checkable
class ContentEncoder(Protocol):
    """Maps a 16 kHz waveform to content features at 50 frames/s."""

    output_dim: int
    learned_content: bool
    description: str

    def encode(self, wav_16k: np.ndarray) -> np.ndarray:
        """``[N]`` float32 at 16 kHz -> ``[T50, C]`` float32, ``T50 = (N - 400) // 320 + 1``."""
        ...


def expected_content_frames(num_samples_16k: int) -> int:
    """``(N - 400) // 320 + 1`` (HuBERT's 400-sample receptive field, stride 320); 0 when ``N < 400``."""
    return 0 if num_samples_16k < 400 else (num_samples_16k - 400) // 320 + 1


@dataclass(frozen=True)
class ContentEncoderInfo:
    """What the features were made with; goes into ``features/manifest.json`` and exported voices."""

    kind: str  # "random" | "hf" | "fairseq"
    path: str | None
    learned_content: bool
    output_dim: int
    output_layer: str  # "last" | "final_proj(9)" ...
    description: str
    identity: str  # hashable string that changes when the weights may change

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "learned_content": self.learned_content,
            "output_dim": self.output_dim,
            "output_layer": self.output_layer,
            "description": self.description,
            "identity": self.identity,
        }


# --------------------------------------------------------------------------- architecture


def _hubert_with_final_proj_class():
    from torch import nn
    from transformers import HubertModel

    class HubertWithFinalProj(HubertModel):
        """transformers' HubertModel plus ContentVec/RVC's ``final_proj`` (hidden -> classifier_proj_size)."""

        def __init__(self, config):
            super().__init__(config)
            self.final_proj = nn.Linear(config.hidden_size, config.classifier_proj_size)

    return HubertWithFinalProj


def build_hubert_config(size: str, hidden_size: int = 768, proj_size: int = 256):
    """HubertConfig for ``size`` ``"base"`` (HuBERT-base / ContentVec) or ``"tiny"`` (hidden ``hidden_size``).

    The tiny config keeps the 7-layer conv front end's kernels and strides (400-sample field, stride 320)
    so frame counts are the same as the real encoder's.
    """
    from transformers import HubertConfig

    if size == "base":
        return HubertConfig(classifier_proj_size=proj_size)
    if size == "tiny":
        heads = 2 if hidden_size % 2 == 0 else 1
        return HubertConfig(
            hidden_size=hidden_size,
            num_hidden_layers=2,
            num_attention_heads=heads,
            intermediate_size=2 * hidden_size,
            conv_dim=(32,) * 7,
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2,
            classifier_proj_size=proj_size,
        )
    raise ValueError(f"features.random_encoder_size must be 'base' or 'tiny', got {size!r}")


def _build_random_network(size: str, hidden_size: int, proj_size: int, seed: int = RANDOM_ENCODER_SEED):
    import torch

    config = build_hubert_config(size, hidden_size, proj_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _hubert_with_final_proj_class()(config)
        # transformers initialises every bias to zero, so silence would map to all-zero features (a trained
        # HuBERT maps it to non-zero ones, e.g. RVC's mute.npy); random biases keep the demo realistic there.
        with torch.no_grad():
            for name, param in net.named_parameters():
                if name.endswith(".bias"):
                    param.normal_(0.0, 0.1)
    return net.eval()


def network_from_hf_model(hf_model: torch.nn.Module) -> HubertNetwork:
    """The same weights in a :class:`HubertNetwork` (from a transformers ``HubertModel`` + ``final_proj``)."""
    from rvc_ray.features.hubert import HubertNetwork, HubertShape

    net = HubertNetwork(HubertShape.from_hf_config(hf_model.config.to_dict()))
    net.load_state_dict(hf_model.state_dict(), strict=True)
    return net.eval()


def _fold_weight_norm(network: HubertNetwork) -> HubertNetwork:
    """``network`` with its weight-normalised convolution (the positional one) holding the weight it computes:
    the same values, computed once instead of on every forward pass (2 % of an encoder call on CPU)."""
    from torch.nn.utils import parametrize

    for module in network.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return network


class HubertContentEncoder:
    """A :class:`ContentEncoder` around a :class:`~rvc_ray.features.hubert.HubertNetwork`."""

    def __init__(self, network: HubertNetwork, *, version: str, info: ContentEncoderInfo, device: str = "cpu"):
        self.network = _fold_weight_norm(network).to(device).eval()
        self.device = device
        self.version = version
        self.info = info
        self.output_dim = info.output_dim
        self.learned_content = info.learned_content
        self.description = info.description

    def encode(self, wav_16k: np.ndarray) -> np.ndarray:
        import torch

        wav = np.asarray(wav_16k, dtype=np.float32)
        if wav.ndim != 1:
            raise ValueError(f"encode expects a mono waveform [N], got shape {wav.shape}")
        if len(wav) < 400:
            return np.zeros((0, self.output_dim), dtype=np.float32)
        x = torch.tensor(wav, device=self.device)[None]
        with torch.inference_mode():
            if self.version == "v1":
                layer = min(V1_OUTPUT_LAYER, self.network.num_layers)
                feats = self.network.final_proj(self.network(x, through_layer=layer))
            else:
                feats = self.network(x)
        return feats[0].float().cpu().numpy()


# --------------------------------------------------------------------------- state-dict conversion

_FAIRSEQ_TO_HF_LAYER = {
    "self_attn.k_proj": "attention.k_proj",
    "self_attn.v_proj": "attention.v_proj",
    "self_attn.q_proj": "attention.q_proj",
    "self_attn.out_proj": "attention.out_proj",
    "self_attn_layer_norm": "layer_norm",
    "fc1": "feed_forward.intermediate_dense",
    "fc2": "feed_forward.output_dense",
    "final_layer_norm": "final_layer_norm",
}
_FAIRSEQ_TO_HF_TOP = {
    "post_extract_proj.weight": "feature_projection.projection.weight",
    "post_extract_proj.bias": "feature_projection.projection.bias",
    "layer_norm.weight": "feature_projection.layer_norm.weight",
    "layer_norm.bias": "feature_projection.layer_norm.bias",
    "encoder.pos_conv.0.bias": "encoder.pos_conv_embed.conv.bias",
    "encoder.pos_conv.0.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    "encoder.pos_conv.0.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
    "encoder.layer_norm.weight": "encoder.layer_norm.weight",
    "encoder.layer_norm.bias": "encoder.layer_norm.bias",
    "mask_emb": "masked_spec_embed",
    "final_proj.weight": "final_proj.weight",
    "final_proj.bias": "final_proj.bias",
}
# Training-only fairseq tensors with no counterpart in the inference network.
_FAIRSEQ_TRAINING_ONLY = ("label_embs_concat",)
_HF_LEGACY_WEIGHT_NORM = {
    "encoder.pos_conv_embed.conv.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    "encoder.pos_conv_embed.conv.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
}


def _fairseq_key_to_hf(key: str) -> str | None:
    if key in _FAIRSEQ_TO_HF_TOP:
        return _FAIRSEQ_TO_HF_TOP[key]
    m = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", key)
    if m:
        return f"feature_extractor.conv_layers.{m[1]}.conv.{m[2]}"
    m = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.2(?:\.1)?\.(weight|bias)", key)
    if m:  # group norm (layer 0, "default" mode) or layer norm ("layer_norm" mode)
        return f"feature_extractor.conv_layers.{m[1]}.layer_norm.{m[2]}"
    m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
    if m and m[2] in _FAIRSEQ_TO_HF_LAYER:
        return f"encoder.layers.{m[1]}.{_FAIRSEQ_TO_HF_LAYER[m[2]]}.{m[3]}"
    return None


def convert_fairseq_to_hf_state(state: dict[str, Any], source: str = "checkpoint") -> dict[str, Any]:
    """Rename fairseq HuBERT keys to transformers' ``HubertModel`` (+ ``final_proj``) keys.

    Raises:
        ValueError: keys that are neither mapped nor known training-only keys (named, with the file).
    """
    converted, unknown = {}, []
    for key, value in state.items():
        if key.startswith(_FAIRSEQ_TRAINING_ONLY):
            continue
        hf_key = _fairseq_key_to_hf(key)
        if hf_key is None:
            unknown.append(key)
        else:
            converted[hf_key] = value
    if unknown:
        raise ValueError(
            f"{source}: {len(unknown)} keys are not part of a fairseq HuBERT/ContentVec model, e.g. {unknown[:5]}"
        )
    return converted


def convert_hf_to_fairseq_state(state: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`convert_fairseq_to_hf_state` (used to write fairseq-style test checkpoints)."""
    inverse_top = {v: k for k, v in _FAIRSEQ_TO_HF_TOP.items()}
    inverse_layer = {v: k for k, v in _FAIRSEQ_TO_HF_LAYER.items()}
    out = {}
    for key, value in state.items():
        if key in inverse_top:
            out[inverse_top[key]] = value
            continue
        m = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.(conv|layer_norm)\.(weight|bias)", key)
        if m:
            out[f"feature_extractor.conv_layers.{m[1]}.{'0' if m[2] == 'conv' else '2'}.{m[3]}"] = value
            continue
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if m and m[2] in inverse_layer:
            out[f"encoder.layers.{m[1]}.{inverse_layer[m[2]]}.{m[3]}"] = value
            continue
        raise ValueError(f"no fairseq name for HubertModel key {key!r}")
    return out


# --------------------------------------------------------------------------- file loading


def load_fairseq_state(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a fairseq checkpoint: ``(state_dict, model_hparams)`` without importing fairseq.

    Tries ``torch.load(weights_only=True)`` first; fairseq files that pickle fairseq/omegaconf objects
    are then read with :data:`~rvc_ray.features.fairseq_pickle.FAIRSEQ_PICKLE`, which resolves only data
    types and replaces every other class by an inert placeholder (no code from the file runs).
    """
    import argparse

    import torch

    if not path.is_file():
        raise FileNotFoundError(f"content encoder checkpoint {path} does not exist (features.content_encoder_path)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - retry with the lenient unpickler below
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False, pickle_module=FAIRSEQ_PICKLE)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(
                f"{path}: cannot be read as a fairseq HuBERT checkpoint (torch.load failed: {exc})"
            ) from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        got = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: a fairseq checkpoint is a dict with a 'model' state dict; found {got}")
    return ckpt["model"], _fairseq_hparams(ckpt)


def _fairseq_hparams(ckpt: dict[str, Any]) -> dict[str, Any]:
    cfg = ckpt.get("cfg")
    model_cfg = None
    if isinstance(cfg, dict):
        model_cfg = cfg.get("model")
    if model_cfg is None and ckpt.get("args") is not None:
        args = ckpt["args"]
        model_cfg = vars(args) if hasattr(args, "__dict__") and not isinstance(args, dict) else args
    if isinstance(model_cfg, Placeholder):
        model_cfg = getattr(model_cfg, "state", None) or {}
        if isinstance(model_cfg, dict) and "_content" in model_cfg:  # omegaconf DictConfig state
            model_cfg = {k: node_value(v) for k, v in model_cfg["_content"].items()}
    return dict(model_cfg) if isinstance(model_cfg, dict) else {}


def _shape_from_fairseq(state: dict[str, Any], hparams: dict[str, Any], source: Path) -> HubertShape:
    """The :class:`HubertShape` of a fairseq state dict: cfg values first, tensor shapes for the rest."""
    from rvc_ray.features.hubert import HubertShape

    try:
        embed = state["post_extract_proj.weight"].shape[0]
        layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layers."))
        ffn = state["encoder.layers.0.fc1.weight"].shape[0]
        pos_v = state["encoder.pos_conv.0.weight_v"]
        proj = state["final_proj.weight"].shape[0]
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{source}: not a fairseq HuBERT/ContentVec state dict (missing {exc})") from None
    conv_spec = hparams.get("conv_feature_layers")
    if isinstance(conv_spec, str):
        conv = parse_conv_feature_layers(conv_spec)
    else:
        conv = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    mode = hparams.get("extractor_mode", "default")
    return HubertShape(
        hidden_size=embed,
        num_hidden_layers=int(hparams.get("encoder_layers", layers)),
        num_attention_heads=int(hparams.get("encoder_attention_heads", max(1, embed // 64))),
        intermediate_size=int(hparams.get("encoder_ffn_embed_dim", ffn)),
        conv_dim=tuple(c[0] for c in conv),
        conv_kernel=tuple(c[1] for c in conv),
        conv_stride=tuple(c[2] for c in conv),
        conv_bias=bool(hparams.get("conv_bias", False)),
        feat_extract_norm="layer" if mode == "layer_norm" else "group",
        do_stable_layer_norm=bool(hparams.get("layer_norm_first", False)),
        num_conv_pos_embeddings=int(hparams.get("conv_pos", pos_v.shape[-1])),
        num_conv_pos_embedding_groups=int(hparams.get("conv_pos_groups", embed // pos_v.shape[1])),
        classifier_proj_size=proj,
        masked_spec_embed="mask_emb" in state,
    )


def _load_strict(net, state: dict[str, Any], source: Path) -> None:
    mismatch = find_state_dict_mismatch(net.state_dict(), state)
    if mismatch:
        raise ValueError(f"{source}: weights do not fit the HuBERT architecture of its config: {mismatch.summary()}")
    net.load_state_dict(state, strict=True)


def _read_hf_weights(directory: Path) -> tuple[dict[str, Any], Path]:
    import torch

    for name in ("model.safetensors", "pytorch_model.bin"):
        file = directory / name
        if not file.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(str(file)), file
            return torch.load(file, map_location="cpu", weights_only=True), file
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"{file}: cannot be read as HuBERT weights ({type(exc).__name__}: {exc})") from exc
    raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin in this HF encoder directory")


def load_hf_encoder(directory: Path) -> HubertNetwork:
    """Load an HF-format encoder directory into a :class:`HubertNetwork` (strict; clear errors)."""
    from rvc_ray.features.hubert import HubertNetwork, HubertShape

    directory = Path(directory)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{directory}: an HF encoder directory needs config.json (not found)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError(f"a JSON object is expected, found {type(config).__name__}")
        shape = HubertShape.from_hf_config(config)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{config_file}: not a valid HuBERT config.json ({exc})") from exc
    state, weights_file = _read_hf_weights(directory)
    state = {k.removeprefix("hubert."): v for k, v in state.items()}
    state = {_HF_LEGACY_WEIGHT_NORM.get(k, k): v for k, v in state.items()}
    if "final_proj.weight" in state:
        shape = replace(shape, classifier_proj_size=int(state["final_proj.weight"].shape[0]))
    net = HubertNetwork(shape)
    if "final_proj.weight" not in state:  # plain HubertModel: v2 never uses final_proj
        state = {**state, **{f"final_proj.{k}": v for k, v in net.final_proj.state_dict().items()}}
        log.warning("%s has no final_proj weights: fine for v2 (last layer), wrong for v1", weights_file)
    _load_strict(net, state, weights_file)
    return net.eval()


def load_fairseq_encoder(path: Path) -> HubertNetwork:
    """Load a fairseq ``hubert_base.pt``-style checkpoint into a :class:`HubertNetwork` (strict)."""
    from rvc_ray.features.hubert import HubertNetwork

    path = Path(path)
    state, hparams = load_fairseq_state(path)
    net = HubertNetwork(_shape_from_fairseq(state, hparams, path))
    _load_strict(net, convert_fairseq_to_hf_state(state, str(path)), path)
    return net.eval()


# --------------------------------------------------------------------------- building


def _resolve_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    return "hf" if path.is_dir() else "fairseq"


def _file_identity(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def describe_content_encoder(features: FeatureConfig, model: ModelConfig) -> ContentEncoderInfo:
    """What :func:`build_content_encoder` will build, without building it (cheap: for hashes and manifests)."""
    layer = "last" if model.version == "v2" else f"final_proj(hidden_states[{V1_OUTPUT_LAYER}])"
    path = features.content_encoder_path
    if path is None:
        import torch
        import transformers

        size = features.random_encoder_size
        identity = (
            f"random:{size}:{model.content_dim}:{model.version}:seed={RANDOM_ENCODER_SEED}:"
            f"transformers={transformers.__version__}:torch={torch.__version__.split('+')[0]}"
        )
        return ContentEncoderInfo(
            kind="random",
            path=None,
            learned_content=False,
            output_dim=model.content_dim,
            output_layer=layer,
            description=f"random HuBERT-architecture encoder ({size}, seed {RANDOM_ENCODER_SEED}): {NO_CONTENT_WARNING}",
            identity=identity,
        )
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"content encoder {path} does not exist (features.content_encoder_path)")
    kind = _resolve_format(path, features.content_encoder_format)
    return ContentEncoderInfo(
        kind=kind,
        path=str(path),
        learned_content=True,
        output_dim=model.content_dim,
        output_layer=layer,
        description=f"HuBERT/ContentVec encoder from {path} ({kind} format, {layer} layer, {model.content_dim}-d)",
        identity=f"{kind}:{path.resolve()}:{_file_identity(path)}:{layer}",
    )


def build_content_encoder(features: FeatureConfig, model: ModelConfig, device: str = "cpu") -> ContentEncoder:
    """The content encoder for a run: loaded from ``features.content_encoder_path`` or the seeded random one.

    v2 -> last layer (768-d for HuBERT-base); v1 -> ``final_proj`` of layer 9 (256-d).

    Raises:
        FileNotFoundError / ValueError: missing, corrupt or mismatched checkpoint (the file and mismatch named);
            an output size that is not ``model.content_dim``.
    """
    info = describe_content_encoder(features, model)
    if info.kind == "random":
        hidden = 768 if features.random_encoder_size == "base" else model.content_dim
        proj = model.content_dim if model.version == "v1" else 256
        if model.version == "v2" and hidden != model.content_dim:
            raise ValueError(
                f"features.random_encoder_size=base gives 768-d v2 features but model.content_dim is "
                f"{model.content_dim}; use random_encoder_size=tiny (hidden = content_dim) or content_dim=768"
            )
        net = network_from_hf_model(_build_random_network(features.random_encoder_size, hidden, proj))
        log.warning("content encoder: %s", info.description)
    else:
        path = Path(info.path)
        net = load_hf_encoder(path) if info.kind == "hf" else load_fairseq_encoder(path)
        out_dim = net.shape.hidden_size if model.version == "v2" else net.shape.classifier_proj_size
        if out_dim != model.content_dim:
            raise ValueError(
                f"{path}: this encoder gives {out_dim}-d {model.version} features "
                f"({info.output_layer}), but model.content_dim is {model.content_dim}"
            )
    return HubertContentEncoder(net, version=model.version, info=info, device=device)
