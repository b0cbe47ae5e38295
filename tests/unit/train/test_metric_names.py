"""The one list of metric names: the steps emit them, the reporters and docs/training.md use them."""

from __future__ import annotations

from pathlib import Path

from rvc_ray.config import LossConfig
from rvc_ray.train import metric_names as names


def test_every_generator_term_has_a_loss_weight_of_the_same_name() -> None:
    terms = {name.removeprefix("loss/g/") for name in names.GENERATOR_TERMS}
    assert {f"c_{term}" for term in terms} == set(LossConfig.model_fields)
    assert all(names.generator_term(term) in names.GENERATOR_TERMS for term in terms)


def test_reported_scalars_are_reduced_every_step_and_documented() -> None:
    assert set(names.SCALAR_NAMES) <= set(names.TRAIN_METRIC_KEYS)
    assert len(set(names.TRAIN_METRIC_KEYS)) == len(names.TRAIN_METRIC_KEYS)
    docs = (Path(__file__).parents[3] / "docs" / "training.md").read_text()
    documented = [*names.TRAIN_METRIC_KEYS, names.VAL_MEL_L1, names.VAL_MCD, names.BEST_VAL_MEL_L1, names.BEST_EPOCH]
    assert [name for name in documented if f"`{name}`" not in docs] == []
