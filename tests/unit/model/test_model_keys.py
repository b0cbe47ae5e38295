"""State-dict manifest of the full RVC v2 40k generator / discriminator, derived from docs/rvc-reference.md §5.

The expected keys and shapes are built here from the documented architecture (not from our modules),
so a renamed or resized layer breaks compatibility with f0G40k.pth / f0D40k.pth and fails this test.
"""

from __future__ import annotations

import math

import pytest

from rvc_ray.config import load_run_config
from rvc_ray.model.build import build_discriminator, build_generator


def _conv(prefix: str, c_out: int, c_in: int, k: int, bias: bool = True) -> dict[str, tuple]:
    out = {f"{prefix}.weight": (c_out, c_in, k)}
    if bias:
        out[f"{prefix}.bias"] = (c_out,)
    return out


def _wn_conv(prefix: str, c_out: int, c_in: int, k: int) -> dict[str, tuple]:
    return {f"{prefix}.bias": (c_out,), f"{prefix}.weight_g": (c_out, 1, 1), f"{prefix}.weight_v": (c_out, c_in, k)}


def _wavenet(prefix: str, hidden: int, kernel: int, layers: int, gin: int) -> dict[str, tuple]:
    m = _wn_conv(f"{prefix}.cond_layer", 2 * hidden * layers, gin, 1)
    for i in range(layers):
        m |= _wn_conv(f"{prefix}.in_layers.{i}", 2 * hidden, hidden, kernel)
        m |= _wn_conv(f"{prefix}.res_skip_layers.{i}", 2 * hidden if i < layers - 1 else hidden, hidden, 1)
    return m


def expected_generator_manifest(
    spec_ch=1025,
    content=768,
    inter=192,
    hidden=192,
    filt=768,
    heads=2,
    layers=6,
    rates=(10, 10, 2, 2),
    kernels=(16, 16, 4, 4),
    uic=512,
    spk=109,
    gin=256,
) -> dict:
    m: dict[str, tuple] = {"emb_g.weight": (spk, gin)}
    m |= {
        "enc_p.emb_phone.weight": (hidden, content),
        "enc_p.emb_phone.bias": (hidden,),
        "enc_p.emb_pitch.weight": (256, hidden),
    }
    k_ch = hidden // heads
    for i in range(layers):
        p = f"enc_p.encoder.attn_layers.{i}"
        m |= {f"{p}.emb_rel_k": (1, 21, k_ch), f"{p}.emb_rel_v": (1, 21, k_ch)}
        for name in ("conv_q", "conv_k", "conv_v", "conv_o"):
            m |= _conv(f"{p}.{name}", hidden, hidden, 1)
        for norm in ("norm_layers_1", "norm_layers_2"):
            m |= {f"enc_p.encoder.{norm}.{i}.gamma": (hidden,), f"enc_p.encoder.{norm}.{i}.beta": (hidden,)}
        m |= _conv(f"enc_p.encoder.ffn_layers.{i}.conv_1", filt, hidden, 3)
        m |= _conv(f"enc_p.encoder.ffn_layers.{i}.conv_2", hidden, filt, 3)
    m |= _conv("enc_p.proj", 2 * inter, hidden, 1)
    m |= _conv("enc_q.pre", hidden, spec_ch, 1) | _wavenet("enc_q.enc", hidden, 5, 16, gin)
    m |= _conv("enc_q.proj", 2 * inter, hidden, 1)
    for f in (0, 2, 4, 6):
        p = f"flow.flows.{f}"
        m |= _conv(f"{p}.pre", hidden, inter // 2, 1) | _wavenet(f"{p}.enc", hidden, 5, 3, gin)
        m |= _conv(f"{p}.post", inter // 2, hidden, 1)
    m |= {"dec.m_source.l_linear.weight": (1, 1), "dec.m_source.l_linear.bias": (1,)}
    m |= _conv("dec.conv_pre", uic, inter, 7) | _conv("dec.cond", uic, gin, 1)
    m |= _conv("dec.conv_post", 1, uic // 2 ** len(rates), 7, bias=False)
    block = 0
    for i, k in enumerate(kernels):
        c_in, c_out = uic // 2**i, uic // 2 ** (i + 1)
        # ConvTranspose1d weight is [in, out, k]; weight norm over dim 0 -> g [in, 1, 1]
        m |= {
            f"dec.ups.{i}.weight_v": (c_in, c_out, k),
            f"dec.ups.{i}.weight_g": (c_in, 1, 1),
            f"dec.ups.{i}.bias": (c_out,),
        }
        stride_f0 = math.prod(rates[i + 1 :])
        m |= _conv(f"dec.noise_convs.{i}", c_out, 1, 2 * stride_f0 if i + 1 < len(rates) else 1)
        for rk in (3, 7, 11):
            for j in range(3):
                m |= _wn_conv(f"dec.resblocks.{block}.convs1.{j}", c_out, c_out, rk)
                m |= _wn_conv(f"dec.resblocks.{block}.convs2.{j}", c_out, c_out, rk)
            block += 1
    return m


def expected_discriminator_manifest(periods=(2, 3, 5, 7, 11, 17, 23, 37)) -> dict:
    m: dict[str, tuple] = {}
    s_layers = [
        (1, 16, 15, 1),
        (16, 64, 41, 4),
        (64, 256, 41, 16),
        (256, 1024, 41, 64),
        (1024, 1024, 41, 256),
        (1024, 1024, 5, 1),
    ]
    for n, (ci, co, k, g) in enumerate(s_layers):
        m |= _wn_conv(f"discriminators.0.convs.{n}", co, ci // g, k)
    m |= _wn_conv("discriminators.0.conv_post", 1, 1024, 3)
    for d, _ in enumerate(periods, start=1):
        for n, (ci, co) in enumerate([(1, 32), (32, 128), (128, 512), (512, 1024), (1024, 1024)]):
            p = f"discriminators.{d}.convs.{n}"
            m |= {f"{p}.bias": (co,), f"{p}.weight_g": (co, 1, 1, 1), f"{p}.weight_v": (co, ci, 5, 1)}
        p = f"discriminators.{d}.conv_post"
        m |= {f"{p}.bias": (1,), f"{p}.weight_g": (1, 1, 1, 1), f"{p}.weight_v": (1, 1024, 3, 1)}
    return m


@pytest.fixture(scope="module")
def models40k():
    cfg = load_run_config("rvc_v2_40k")
    return build_generator(cfg.model, cfg.audio), build_discriminator(cfg.model)


def _shapes(module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_generator_40k_matches_rvc_manifest(models40k) -> None:
    gen, _ = models40k
    expected, actual = expected_generator_manifest(), _shapes(gen)
    assert sorted(set(expected) - set(actual)) == []
    assert sorted(set(actual) - set(expected)) == []
    assert {k: v for k, v in actual.items() if expected[k] != v} == {}
    assert len(actual) == 560


def test_discriminator_40k_matches_rvc_manifest(models40k) -> None:
    _, disc = models40k
    expected, actual = expected_discriminator_manifest(), _shapes(disc)
    assert set(expected) == set(actual)
    assert {k: v for k, v in actual.items() if expected[k] != v} == {}
    assert len(actual) == 165


def test_parameter_counts_match_rvc_spec(models40k) -> None:
    gen, disc = models40k
    sd = gen.state_dict()

    def count(prefix: str = "") -> int:
        return sum(v.numel() for k, v in sd.items() if k.startswith(prefix))

    assert count() == 36_458_818
    assert (count("enc_p."), count("enc_q."), count("flow."), count("dec."), count("emb_g.")) == (
        6_503_232,
        8_921_472,
        6_515_328,
        14_490_882,
        27_904,
    )
    assert count() - count("enc_q.") == 27_537_346
    assert sum(p.numel() for p in gen.parameters()) == 36_458_818
    assert sum(v.numel() for v in disc.state_dict().values()) == 71_410_594


def test_state_dict_round_trips_through_classic_weight_norm_names(models40k) -> None:
    gen, _ = models40k
    sd = gen.state_dict()
    assert not any("parametrizations" in k for k in sd)
    result = gen.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.slow
@pytest.mark.parametrize(
    ("preset", "total", "dec"), [("rvc_v2_32k", 36_880_706, 15_011_074), ("rvc_v2_48k", 37_638_466, 15_670_530)]
)
def test_other_sample_rates_match_rvc_counts(preset: str, total: int, dec: int) -> None:
    cfg = load_run_config(preset)
    gen = build_generator(cfg.model, cfg.audio)
    sd = gen.state_dict()
    assert sum(v.numel() for v in sd.values()) == total
    assert sum(v.numel() for k, v in sd.items() if k.startswith("dec.")) == dec
    expected = expected_generator_manifest(
        spec_ch=cfg.audio.spec_channels, rates=cfg.model.upsample_rates, kernels=cfg.model.upsample_kernel_sizes
    )
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
