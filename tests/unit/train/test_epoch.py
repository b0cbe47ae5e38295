"""Skipped steps: fp16 GradScaler skips are counted but only a long run of them stops training."""

from __future__ import annotations

import pytest
import torch

from rvc_ray.config import load_run_config
from rvc_ray.train.epoch import RunState, count_skips
from rvc_ray.train.gan_state import Adversary, GANState, GeneratorState
from rvc_ray.train.steps import NonFiniteLossError, TrainingHealthError


def _run() -> RunState:
    gen, disc = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    gan = GANState(
        GeneratorState(gen, torch.optim.AdamW(gen.parameters()), None),
        Adversary(disc, torch.optim.AdamW(disc.parameters()), None),
    )
    return RunState(0, torch.device("cpu"), 0, gan)


def test_scaler_skips_stop_only_after_too_many_in_a_row() -> None:
    cfg = load_run_config("tiny_cpu", ["train.max_skipped_steps=2"])
    run = _run()
    scaler_skip, fine = {"skipped": 1.0, "skipped/scaler": 1.0}, {"skipped": 0.0, "skipped/scaler": 0.0}
    for metrics in (scaler_skip, scaler_skip, fine, scaler_skip, scaler_skip, fine) * 3:
        count_skips(cfg, run, metrics)  # runs of 2 are the normal settling of the scale
    assert run.skipped_steps == 0
    count_skips(cfg, run, scaler_skip)
    count_skips(cfg, run, scaler_skip)
    with pytest.raises(NonFiniteLossError, match="skipped 3 steps in a row"):
        count_skips(cfg, run, scaler_skip)


def test_policy_skips_count_over_the_whole_run() -> None:
    cfg = load_run_config("tiny_cpu", ["train.max_skipped_steps=2"])
    run = _run()
    for metrics in ({"skipped": 1.0}, {"skipped": 0.0}, {"skipped": 1.0}):
        count_skips(cfg, run, metrics)
    with pytest.raises(TrainingHealthError, match="skipped 3 steps"):
        count_skips(cfg, run, {"skipped": 1.0})
