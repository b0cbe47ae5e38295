"""G_*.pth interop with Applio and RVC-WebUI: optimizer state follows each parameter by name, both ways.

Applio's and RVC-WebUI's files are built here the way those trainers write them (``torch.save`` of
``{"model", "iteration", "optimizer": optimizer.state_dict(), "learning_rate"}``, Applio adding ``"scaler"``),
with an AdamW whose parameters are listed in the trainer's registration order, and read back the way they read
them (``optimizer.load_state_dict(file["optimizer"])`` on an AdamW over their order). The orders are written
out here from the trainers' decoder definitions, independently of rvc_ray.model.optimizer_order.
"""

from __future__ import annotations

import zlib

import pytest
import torch

from rvc_ray.config import load_run_config
from rvc_ray.model.build import build_generator
from rvc_ray.model.weights import PretrainedMismatchError, load_rvc_checkpoint, save_rvc_checkpoint

# registration order of the NSF decoder's submodules in each trainer
_DECODER_ORDER = {
    "rvc-webui": ("m_source", "noise_convs", "conv_pre", "ups", "resblocks", "conv_post", "cond"),
    "applio": ("m_source", "conv_pre", "ups", "noise_convs", "resblocks", "conv_post", "cond"),
}


@pytest.fixture(scope="module")
def cfg():
    return load_run_config("tiny_cpu")


def _classic(name: str) -> str:
    return name.replace("parametrizations.weight.original0", "weight_g").replace(
        "parametrizations.weight.original1", "weight_v"
    )


def _params_in_trainer_order(gen: torch.nn.Module, trainer: str) -> list[tuple[str, torch.nn.Parameter]]:
    """(classic name, parameter) in the order the trainer's own model would register them."""
    named = [(_classic(n), p) for n, p in gen.named_parameters()]
    dec = [i for i, (n, _) in enumerate(named) if n.startswith("dec.")]
    assert dec == list(range(dec[0], dec[-1] + 1)), "the decoder's parameters are one block"
    order = _DECODER_ORDER[trainer]
    block = sorted((named[i] for i in dec), key=lambda item: order.index(item[0].split(".")[1]))  # stable
    return named[: dec[0]] + block + named[dec[-1] + 1 :]


def _adamw(params: list[torch.nn.Parameter]) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=1e-4, betas=(0.8, 0.99), eps=1e-9)


def _step(named: list[tuple[str, torch.nn.Parameter]], opt: torch.optim.Optimizer, seed: int) -> None:
    """One optimizer step with gradients that depend only on (parameter name, seed)."""
    for name, param in named:
        rng = torch.Generator().manual_seed(zlib.crc32(name.encode()) + seed)
        param.grad = torch.randn(param.shape, generator=rng)
    opt.step()


def _state_by_name(named: list[tuple[str, torch.nn.Parameter]], opt: torch.optim.Optimizer) -> dict[str, dict]:
    return {name: opt.state[p] for name, p in named if p in opt.state and opt.state[p]}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.mark.parametrize("trainer", ["applio", "rvc-webui"])
def test_rvc_ray_resumes_from_their_file_with_every_adam_moment_on_its_parameter(cfg, tmp_path, trainer) -> None:
    theirs = build_generator(cfg.model, cfg.audio)
    their_named = _params_in_trainer_order(theirs, trainer)
    their_opt = _adamw([p for _, p in their_named])
    _step(their_named, their_opt, seed=1)
    _step(their_named, their_opt, seed=2)
    payload = {"model": theirs.state_dict(), "iteration": 3, "optimizer": their_opt.state_dict(), "learning_rate": 1e-4}
    if trainer == "applio":
        payload["scaler"] = {}
    torch.save(payload, tmp_path / "G_300.pth")

    ours = build_generator(cfg.model, cfg.audio)
    our_named = [(_classic(n), p) for n, p in ours.named_parameters()]
    our_opt = _adamw(list(ours.parameters()))
    assert int(load_rvc_checkpoint(tmp_path / "G_300.pth", ours, our_opt)) == 3

    theirs_by_name, ours_by_name = _state_by_name(their_named, their_opt), _state_by_name(our_named, our_opt)
    assert ours_by_name.keys() == theirs_by_name.keys() and len(ours_by_name) == len(our_named)
    for name, state in theirs_by_name.items():
        _assert_same_state(ours_by_name[name], state)
    _step(their_named, their_opt, seed=3)
    _step(our_named, our_opt, seed=3)  # the step that crashed when the state was read by position
    their_params = dict(their_named)
    for name, param in our_named:
        torch.testing.assert_close(param, their_params[name], rtol=0, atol=0)


def test_applio_file_read_by_position_would_misassign_state(cfg, tmp_path) -> None:
    """The control for the test above: Applio's order really differs from ours where the shapes differ."""
    gen = build_generator(cfg.model, cfg.audio)
    applio_named = _params_in_trainer_order(gen, "applio")
    our_names = [_classic(n) for n, _ in gen.named_parameters()]
    assert [n for n, _ in applio_named] != our_names
    shapes = dict(applio_named)
    misplaced = [i for i, (n, _) in enumerate(applio_named) if shapes[our_names[i]].shape != shapes[n].shape]
    assert misplaced, "reading Applio's state by position gives some parameter a state of another shape"


@pytest.mark.parametrize("trainer", ["applio", "rvc-webui"])
def test_their_loader_resumes_from_rvc_ray_file_without_misassigned_state(cfg, tmp_path, trainer) -> None:
    ours = build_generator(cfg.model, cfg.audio)
    our_named = [(_classic(n), p) for n, p in ours.named_parameters()]
    our_opt = _adamw(list(ours.parameters()))
    _step(our_named, our_opt, seed=1)
    _step(our_named, our_opt, seed=2)
    path = save_rvc_checkpoint(tmp_path / "G_200.pth", ours, our_opt, epoch=2, learning_rate=1e-4)

    raw = torch.load(path, map_location="cpu", weights_only=True)  # as both trainers read it
    theirs = build_generator(cfg.model, cfg.audio)
    theirs.load_state_dict(raw["model"])
    their_named = _params_in_trainer_order(theirs, trainer)
    their_opt = _adamw([p for _, p in their_named])
    their_opt.load_state_dict(raw["optimizer"])

    ours_by_name, theirs_by_name = _state_by_name(our_named, our_opt), _state_by_name(their_named, their_opt)
    for name, state in theirs_by_name.items():
        _assert_same_state(state, ours_by_name[name])
    orders = {t: [n for n, _ in _params_in_trainer_order(ours, t)] for t in _DECODER_ORDER}
    order_dependent = {a for a, b in zip(orders["applio"], orders["rvc-webui"], strict=True) if a != b}
    assert set(ours_by_name) - set(theirs_by_name) == order_dependent  # these start fresh moments in their tool
    assert 0 < len(order_dependent) < len(our_named) // 4
    _step(their_named, their_opt, seed=3)
    assert all(torch.isfinite(p).all() for _, p in their_named)

    again = build_generator(cfg.model, cfg.audio)  # and rvc-ray itself gets the full state back
    again_named = [(_classic(n), p) for n, p in again.named_parameters()]
    again_opt = _adamw(list(again.parameters()))
    load_rvc_checkpoint(path, again, again_opt)
    again_by_name = _state_by_name(again_named, again_opt)
    assert again_by_name.keys() == ours_by_name.keys()
    for name, state in ours_by_name.items():
        _assert_same_state(again_by_name[name], state)


def test_optimizer_state_that_fits_neither_order_is_refused(cfg, tmp_path) -> None:
    gen = build_generator(cfg.model, cfg.audio)
    named = _params_in_trainer_order(gen, "applio")
    opt = _adamw([p for _, p in named])
    _step(named, opt, seed=1)
    state = opt.state_dict()
    state["state"][0]["exp_avg"] = torch.zeros(3)
    torch.save({"model": gen.state_dict(), "iteration": 1, "optimizer": state, "learning_rate": 1e-4}, tmp_path / "G_1.pth")
    fresh = build_generator(cfg.model, cfg.audio)
    with pytest.raises(PretrainedMismatchError, match=r"G_1\.pth: optimizer state does not fit .* fits neither"):
        load_rvc_checkpoint(tmp_path / "G_1.pth", fresh, _adamw(list(fresh.parameters())))
