"""Content encoders: the random one, HF-directory and fairseq checkpoints (same outputs), clear errors."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from rvc_ray.features.content import (
    build_content_encoder,
    convert_hf_to_fairseq_state,
    expected_content_frames,
)

# A tiny fairseq conv front end with the real kernels/strides (400-sample field, stride 320).
_CONV = [(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2


@pytest.fixture(scope="module")
def saved_encoder(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random HubertWithFinalProj saved as an HF directory and as a fairseq checkpoint."""
    import torch

    from rvc_ray.features.content import _build_random_network

    net = _build_random_network("tiny", 64, 256, seed=7)
    root = tmp_path_factory.mktemp("encoders")
    hf_dir = root / "contentvec_hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(net.config.to_json_string())
    torch.save(net.state_dict(), hf_dir / "pytorch_model.bin")
    fairseq_state = convert_hf_to_fairseq_state(net.state_dict())
    fairseq_state["label_embs_concat"] = torch.zeros(504, 256)  # training-only tensor real files carry
    model_cfg = {
        "encoder_layers": 2,
        "encoder_attention_heads": 2,
        "encoder_ffn_embed_dim": 128,
        "conv_feature_layers": str(_CONV),
        "conv_pos": 16,
        "conv_pos_groups": 2,
        "final_dim": 256,
    }
    fairseq_path = root / "hubert_base.pt"
    torch.save({"args": None, "cfg": {"model": model_cfg}, "model": fairseq_state}, fairseq_path)
    return net, hf_dir, fairseq_path


def _wav(seconds: float = 1.0) -> np.ndarray:
    return (0.1 * np.random.default_rng(0).standard_normal(int(16000 * seconds))).astype(np.float32)


def test_random_tiny_encoder_shapes_and_no_content_label(tiny_cfg) -> None:
    encoder = build_content_encoder(tiny_cfg.features, tiny_cfg.model)
    feats = encoder.encode(_wav(1.0))
    assert feats.shape == (expected_content_frames(16000), 64) == (49, 64)
    assert feats.dtype == np.float32 and np.isfinite(feats).all()
    assert encoder.learned_content is False and "NO learned content" in encoder.description
    assert encoder.encode(np.zeros(399, np.float32)).shape == (0, 64)  # shorter than one frame


def test_random_encoder_is_the_same_in_every_build(tiny_cfg) -> None:
    import torch

    torch.manual_seed(99)  # the global RNG must not matter
    a = build_content_encoder(tiny_cfg.features, tiny_cfg.model).encode(_wav(0.5))
    torch.manual_seed(5)
    b = build_content_encoder(tiny_cfg.features, tiny_cfg.model).encode(_wav(0.5))
    np.testing.assert_array_equal(a, b)


def test_hf_dir_and_fairseq_checkpoint_give_identical_outputs(saved_encoder, tiny_cfg) -> None:
    net, hf_dir, fairseq_path = saved_encoder
    wav = _wav(0.7)
    outputs = {}
    for fmt, path in (("hf", hf_dir), ("fairseq", fairseq_path), ("auto", hf_dir), ("auto", fairseq_path)):
        features = tiny_cfg.features.model_copy(update={"content_encoder_path": path, "content_encoder_format": fmt})
        encoder = build_content_encoder(features, tiny_cfg.model)
        assert encoder.learned_content and encoder.output_dim == 64
        outputs[(fmt, path.name)] = encoder.encode(wav)
    reference = outputs[("hf", hf_dir.name)]
    assert reference.shape == (expected_content_frames(len(wav)), 64)
    for key, value in outputs.items():
        np.testing.assert_array_equal(value, reference, err_msg=str(key))
    import torch

    with torch.no_grad():
        direct = net(torch.from_numpy(wav)[None]).last_hidden_state[0].numpy()
    np.testing.assert_allclose(reference, direct, rtol=0, atol=1e-6)


def test_v1_uses_final_proj(saved_encoder, tiny_cfg) -> None:
    _, hf_dir, fairseq_path = saved_encoder
    model = tiny_cfg.model.model_copy(update={"version": "v1", "content_dim": 256})
    outs = []
    for path in (hf_dir, fairseq_path):
        features = tiny_cfg.features.model_copy(update={"content_encoder_path": path})
        outs.append(build_content_encoder(features, model).encode(_wav(0.5)))
    assert outs[0].shape[1] == 256
    np.testing.assert_array_equal(outs[0], outs[1])


def test_wrong_content_dim_is_named(saved_encoder, tiny_cfg) -> None:
    _, hf_dir, _ = saved_encoder
    features = tiny_cfg.features.model_copy(update={"content_encoder_path": hf_dir})
    model = tiny_cfg.model.model_copy(update={"content_dim": 768})
    with pytest.raises(ValueError, match=r"gives 64-d v2 features .* model.content_dim is 768"):
        build_content_encoder(features, model)


def test_wrong_shape_and_corrupt_checkpoints_name_the_file_and_mismatch(saved_encoder, tiny_cfg, tmp_path: Path):
    import shutil

    import torch

    net, hf_dir, fairseq_path = saved_encoder
    # HF dir whose weights do not fit its config.json
    bad_dir = tmp_path / "bad_hf"
    shutil.copytree(hf_dir, bad_dir)
    state = dict(net.state_dict())
    state["encoder.layers.0.feed_forward.intermediate_dense.weight"] = torch.zeros(100, 64)
    torch.save(state, bad_dir / "pytorch_model.bin")
    features = tiny_cfg.features.model_copy(update={"content_encoder_path": bad_dir})
    with pytest.raises(
        ValueError, match=r"pytorch_model\.bin.*intermediate_dense\.weight: file \(100, 64\) vs model \(128, 64\)"
    ):
        build_content_encoder(features, tiny_cfg.model)
    # corrupt weights file
    (bad_dir / "pytorch_model.bin").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match=r"bad_hf/pytorch_model\.bin: cannot be read"):
        build_content_encoder(features, tiny_cfg.model)
    # fairseq file with a foreign key and a corrupt one
    ckpt = torch.load(fairseq_path, weights_only=True)
    ckpt["model"]["decoder.weight"] = torch.zeros(2)
    torch.save(ckpt, tmp_path / "extra.pt")
    features = tiny_cfg.features.model_copy(update={"content_encoder_path": tmp_path / "extra.pt"})
    with pytest.raises(ValueError, match=r"extra\.pt.*decoder\.weight"):
        build_content_encoder(features, tiny_cfg.model)
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 broken zip")
    features = tiny_cfg.features.model_copy(update={"content_encoder_path": tmp_path / "corrupt.pt"})
    with pytest.raises(ValueError, match=r"corrupt\.pt: cannot be read as a fairseq HuBERT checkpoint"):
        build_content_encoder(features, tiny_cfg.model)
    features = tiny_cfg.features.model_copy(update={"content_encoder_path": tmp_path / "nope.pt"})
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build_content_encoder(features, tiny_cfg.model)


# --------------------------------------------------------------------------- alignment and split (pure)


def test_alignment_frame_doubles_and_trims_every_stream_to_one_length() -> None:
    from rvc_ray.features.stages import align_feature_streams

    n16 = 16000 + 160 * 3 + 37  # 1.03 s + a bit
    t50 = expected_content_frames(n16)
    content = np.arange(t50 * 3, dtype=np.float32).reshape(t50, 3)
    f0 = np.full(n16 // 160 + 1, 200.0, np.float32)
    sr, hop = 40000, 400
    wav = np.zeros(int(n16 * sr / 16000), np.float32)
    row = align_feature_streams(
        wav=wav,
        wav_16k=np.zeros(n16, np.float32),
        f0_hz=f0,
        content_50hz=content,
        hop_length=hop,
        sample_rate=sr,
        f0_min=50.0,
        f0_max=1100.0,
    )
    frames = min(2 * t50, len(f0), len(wav) // hop)
    assert row["num_frames"] == frames
    assert row["content"].shape == (frames, 3) and row["f0_hz"].shape == row["pitch_bins"].shape == (frames,)
    assert len(row["wav"]) == frames * hop and len(row["wav_16k"]) == frames * 160
    np.testing.assert_array_equal(row["content"][0], row["content"][1])  # x2 duplication, as RVC
    np.testing.assert_array_equal(row["content"][::2], content[: (frames + 1) // 2])
    assert set(row["pitch_bins"].tolist()) == {54}


@pytest.mark.parametrize(
    ("content", "f0", "match"),
    [
        (np.zeros((0, 3), np.float32), np.ones(10, np.float32), "empty content"),
        (np.full((4, 3), np.nan, np.float32), np.ones(10, np.float32), "NaN"),
        (np.ones((4, 3), np.float32), np.array([np.nan] * 10, np.float32), "F0 track contains NaN"),
    ],
)
def test_alignment_rejects_empty_or_nan_features(content, f0, match) -> None:
    from rvc_ray.features.stages import FeatureRowError, align_feature_streams

    with pytest.raises(FeatureRowError, match=match):
        align_feature_streams(
            wav=np.zeros(1600, np.float32),
            wav_16k=np.zeros(1600, np.float32),
            f0_hz=f0,
            content_50hz=content,
            hop_length=160,
            sample_rate=16000,
            f0_min=50.0,
            f0_max=1100.0,
        )


def test_split_is_deterministic_with_per_speaker_guarantees() -> None:
    from rvc_ray.features.split import assign_splits

    rows = [(f"{spk}_{i:05d}_0000", spk) for spk in range(3) for i in range(20)] + [("3_00000_0000", 3)]
    a = assign_splits(rows, 0.1)
    assert a == assign_splits(list(reversed(rows)), 0.1)
    for spk in range(3):
        values = [a[sid] for sid, s in rows if s == spk]
        assert "val" in values and "train" in values
    assert a["3_00000_0000"] == "train"  # a single-segment speaker keeps its segment for training
    assert set(assign_splits(rows, 0.0).values()) == {"train"}
    tiny = assign_splits([("a", 0), ("b", 0)], 0.99)
    assert sorted(tiny.values()) == ["train", "val"]


def _fake_module(name: str, **classes: type) -> types.ModuleType:
    module = types.ModuleType(name)
    for class_name, cls in classes.items():
        cls.__module__, cls.__qualname__ = name, class_name
        setattr(module, class_name, cls)
    return module


def test_fairseq_checkpoint_with_omegaconf_objects_loads_without_omegaconf(
    saved_encoder, tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real fairseq files pickle their config as omegaconf objects: weights_only=True refuses them, and the
    fallback reads them with inert placeholders, the node values included (not just the shapes)."""
    import torch

    from rvc_ray.features.content import load_fairseq_state

    class AnyNode:
        def __init__(self, value: object) -> None:
            self._val, self._metadata = value, None

    class DictConfig:
        def __init__(self, content: dict) -> None:
            self.content = content

        def __getstate__(self) -> dict:
            return {"_content": {k: AnyNode(v) for k, v in self.content.items()}, "_parent": None}

    net, hf_dir, fairseq_path = saved_encoder
    ckpt = torch.load(fairseq_path, weights_only=True)
    monkeypatch.setitem(sys.modules, "omegaconf", _fake_module("omegaconf"))
    monkeypatch.setitem(sys.modules, "omegaconf.nodes", _fake_module("omegaconf.nodes", AnyNode=AnyNode))
    monkeypatch.setitem(sys.modules, "omegaconf.dictconfig", _fake_module("omegaconf.dictconfig", DictConfig=DictConfig))
    ckpt["cfg"] = {"model": DictConfig(dict(ckpt["cfg"]["model"], encoder_layers=2))}
    path = tmp_path / "contentvec_omegaconf.pt"
    torch.save(ckpt, path)
    for name in ("omegaconf", "omegaconf.nodes", "omegaconf.dictconfig"):
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(Exception, match="omegaconf"):
        torch.load(path, weights_only=True)

    state, hparams = load_fairseq_state(path)
    assert hparams["encoder_layers"] == 2 and hparams["conv_feature_layers"] == str(_CONV)
    assert set(state) == set(ckpt["model"])
    features = tiny_cfg.features.model_copy(update={"content_encoder_path": path, "content_encoder_format": "fairseq"})
    hf = tiny_cfg.features.model_copy(update={"content_encoder_path": hf_dir, "content_encoder_format": "hf"})
    wav = _wav(0.5)
    np.testing.assert_array_equal(
        build_content_encoder(features, tiny_cfg.model).encode(wav), build_content_encoder(hf, tiny_cfg.model).encode(wav)
    )


def test_fairseq_unpickler_runs_no_code_from_the_file(tmp_path: Path) -> None:
    import io
    import pickle

    from rvc_ray.features.fairseq_pickle import FairseqUnpickler, Placeholder

    witness = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {witness}",))

    # os.system by its own name: resolved to an inert placeholder, never called
    loaded = FairseqUnpickler(io.BytesIO(pickle.dumps({"cfg": Exploit()}))).load()
    assert isinstance(loaded["cfg"], Placeholder) and not witness.exists()

    # protocol 4 reaches os.system through an allowed module ("torch" + "os.system"): refused
    def short(text: str) -> bytes:
        return b"\x8c" + bytes([len(text)]) + text.encode() + b"\x94"

    dotted = b"\x80\x04" + short("torch") + short("os.system") + b"\x93" + short(f"touch {witness}") + b"\x85R."
    with pytest.raises(pickle.UnpicklingError, match="dotted global torch:os.system"):
        FairseqUnpickler(io.BytesIO(dotted)).load()
    # getattr on a real object (getattr(torch, "load")...): refused; torch.hub is not an allowed global
    via_getattr = b"\x80\x04" + short("builtins") + short("getattr") + b"\x93" + short("collections") + short(
        "OrderedDict"
    ) + b"\x93" + short("__init__") + b"\x86R."
    with pytest.raises(pickle.UnpicklingError, match="refusing getattr"):
        FairseqUnpickler(io.BytesIO(via_getattr)).load()
    hub = b"\x80\x04" + short("torch.hub") + short("load") + b"\x93" + short("x") + b"\x85R."
    assert isinstance(FairseqUnpickler(io.BytesIO(hub)).load(), Placeholder)
    assert not witness.exists()


def test_conv_feature_layers_are_parsed_not_evaluated() -> None:
    from rvc_ray.features.fairseq_pickle import parse_conv_feature_layers

    spec = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"
    assert parse_conv_feature_layers(spec) == [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    assert parse_conv_feature_layers(str(_CONV)) == _CONV
    for bad in ("__import__('os').system('true')", "[(1,2,3)] * 10**9", "[(1, 2)]", "[]", "[(1,2,3)] +"):
        with pytest.raises(ValueError, match="conv_feature_layers"):
            parse_conv_feature_layers(bad)


@pytest.mark.parametrize("variant", ["post_norm_group", "stable_layer_norm"])
def test_plain_torch_network_computes_what_transformers_computes(variant: str) -> None:
    """rvc-ray's HubertNetwork against transformers' HubertModel with the same weights: the last layer and
    every intermediate layer (v1 reads layer 9), for both encoder layouts HuBERT checkpoints use."""
    import torch
    from transformers import HubertConfig

    from rvc_ray.features.content import _hubert_with_final_proj_class, network_from_hf_model

    stable = variant == "stable_layer_norm"
    config = HubertConfig(
        hidden_size=48, num_hidden_layers=10, num_attention_heads=4, intermediate_size=96,
        conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, classifier_proj_size=24,
        do_stable_layer_norm=stable, feat_extract_norm="layer" if stable else "group", conv_bias=stable,
    )  # fmt: skip
    torch.manual_seed(3)
    reference = _hubert_with_final_proj_class()(config).eval()
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if name.endswith(".bias") or "layer_norm" in name:
                param.normal_(0.0, 0.2)  # transformers' init leaves these 0 / 1, which would hide a swapped term
    ours = network_from_hf_model(reference)
    wav = torch.from_numpy(_wav(0.6))[None]
    with torch.inference_mode():
        expected = reference(wav, output_hidden_states=True)
        torch.testing.assert_close(ours(wav), expected.last_hidden_state, rtol=0, atol=1e-5)
        for layer in (1, 9) if not stable else (1,):  # stable: hidden_states are pre-final-norm layer outputs
            torch.testing.assert_close(ours(wav, through_layer=layer), expected.hidden_states[layer], rtol=0, atol=1e-5)


def test_hf_configs_the_plain_network_cannot_compute_are_refused(saved_encoder, tmp_path: Path) -> None:
    import json
    import shutil

    from rvc_ray.features.content import load_hf_encoder

    _, hf_dir, _ = saved_encoder
    odd = tmp_path / "relu_hubert"
    shutil.copytree(hf_dir, odd)
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "hidden_act": "relu", "conv_pos_batch_norm": True}))
    with pytest.raises(ValueError, match=r"config.json.*hidden_act='relu', conv_pos_batch_norm=True"):
        load_hf_encoder(odd)


def test_the_encoder_computes_its_weight_normalised_conv_once_with_the_same_result() -> None:
    import copy

    import torch
    from torch.nn.utils import parametrize

    from rvc_ray.features.content import (
        ContentEncoderInfo,
        HubertContentEncoder,
        _build_random_network,
        network_from_hf_model,
    )

    network = network_from_hf_model(_build_random_network("tiny", 32, 16))
    assert any(parametrize.is_parametrized(m, "weight") for m in network.modules())
    wav = _wav(0.5)
    with torch.inference_mode():
        expected = network(torch.from_numpy(wav)[None])[0].numpy()
    info = ContentEncoderInfo(kind="random", path=None, learned_content=False, output_dim=32, output_layer="last",
                              description="test", identity="test")  # fmt: skip
    encoder = HubertContentEncoder(copy.deepcopy(network), version="v2", info=info)
    assert not any(parametrize.is_parametrized(m, "weight") for m in encoder.network.modules())
    np.testing.assert_array_equal(encoder.encode(wav), expected)
