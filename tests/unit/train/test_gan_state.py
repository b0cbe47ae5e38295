"""The typed GAN state: the adversary owns D's update and hands G its adversarial terms with D read-only."""

from __future__ import annotations

import math

import pytest
import torch

from rvc_ray.config import load_run_config
from rvc_ray.train.gan_state import Adversary, GANState, GeneratorState
from rvc_ray.train.steps import (
    StepSettings,
    adversarial_terms,
    build_schedulers,
    d_step,
    g_step,
    generator_forward,
)
from tests.unit.train.test_steps import _assert_same, _snapshot, make_batch, make_models


@pytest.fixture(scope="module")
def cfg():
    return load_run_config("tiny_cpu")


def make_gan(cfg, seed: int = 0) -> GANState:
    gen, disc, opt_g, opt_d = make_models(cfg, seed)
    sched_g, sched_d = build_schedulers(opt_g, opt_d, cfg.optim)
    return GANState(GeneratorState(gen, opt_g, sched_g), Adversary(disc, opt_d, sched_d))


def test_adversary_step_updates_d_only(cfg) -> None:
    gan = make_gan(cfg)
    settings = StepSettings.from_config(cfg)
    gpass = generator_forward(gan.generator.model, make_batch(cfg), settings)
    g_before, d_before = _snapshot(gan.generator.model), _snapshot(gan.adversary.model)
    metrics = gan.adversary.step(gpass, settings)
    assert math.isfinite(metrics["loss/d/total"]) and metrics["grad_norm_d"] > 0
    _assert_same(gan.generator.model, g_before)
    assert all(p.grad is None for p in gan.generator.model.parameters())
    after = gan.adversary.model.state_dict()
    assert any(not torch.equal(v, d_before[k]) for k, v in after.items())


def test_adversary_generator_terms_leave_d_read_only(cfg) -> None:
    gan = make_gan(cfg)
    settings = StepSettings.from_config(cfg)
    gpass = generator_forward(gan.generator.model, make_batch(cfg), settings)
    d_before = _snapshot(gan.adversary.model)
    terms = gan.adversary.generator_terms(gpass, settings)
    assert set(terms) == {"loss/g/adv", "loss/g/fm"}
    assert all(t.dtype == torch.float32 and t.ndim == 0 and math.isfinite(float(t.detach())) for t in terms.values())
    sum(terms.values()).backward(inputs=list(gan.generator.model.parameters()))
    assert all(p.grad is None for p in gan.adversary.model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gan.generator.model.parameters())
    _assert_same(gan.adversary.model, d_before)


def test_gan_state_step_is_the_d_then_g_recipe_and_schedulers_decay_both(cfg) -> None:
    settings = StepSettings.from_config(cfg)
    gan = make_gan(cfg, seed=3)
    gen, disc, opt_g, opt_d = make_models(cfg, seed=3)
    torch.manual_seed(11)
    via_state = gan.train_step(make_batch(cfg), settings)
    torch.manual_seed(11)
    gpass = generator_forward(gen, make_batch(cfg), settings)
    direct = d_step(disc, opt_d, gpass, settings)
    direct.update(g_step(adversarial_terms(disc, gpass, settings), opt_g, gpass, settings))
    assert {k: v for k, v in via_state.items() if not k.startswith("skipped")} == {
        k: v for k, v in direct.items() if not k.startswith("skipped")
    }
    assert via_state["skipped"] == 0.0 and via_state["skipped/scaler"] == 0.0
    assert _snapshot(gan.generator.model).keys() == _snapshot(gen).keys()
    assert all(torch.equal(v, gen.state_dict()[k]) for k, v in gan.generator.model.state_dict().items())
    lr_g, lr_d = gan.learning_rate, gan.adversary.optimizer.param_groups[0]["lr"]
    gan.step_schedulers()
    assert gan.learning_rate == pytest.approx(lr_g * cfg.optim.lr_decay)
    assert gan.adversary.optimizer.param_groups[0]["lr"] == pytest.approx(lr_d * cfg.optim.lr_decay)


def test_generator_step_releases_d_gradients_left_by_the_d_step(cfg) -> None:
    gan = make_gan(cfg)
    settings = StepSettings.from_config(cfg)
    gpass = generator_forward(gan.generator.model, make_batch(cfg), settings)
    gan.adversary.step(gpass, settings)
    assert any(p.grad is not None for p in gan.adversary.model.parameters())  # D's own step left them
    d_before = _snapshot(gan.adversary.model)
    metrics = gan.generator.step(gan.adversary, gpass, settings)
    assert math.isfinite(metrics["loss/g/total"]) and metrics["grad_norm_g"] > 0
    assert all(p.grad is None for p in gan.adversary.model.parameters())
    _assert_same(gan.adversary.model, d_before)
