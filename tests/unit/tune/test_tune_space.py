"""Search-space parsing and up-front validation (no Ray cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rvc_ray.config import ConfigError, RunConfig
from rvc_ray.tune.space import (
    SearchDimension,
    apply_overrides,
    build_search_space,
    load_search_file,
    parse_search_arg,
    parse_search_expression,
)


@pytest.mark.parametrize(
    ("text", "kind", "values"),
    [
        ("optim.lr_generator=loguniform(1e-5,3e-4)", "loguniform", (1e-5, 3e-4)),
        ("loss.c_adv=uniform(0.5, 2)", "uniform", (0.5, 2.0)),
        ("train.batch_size=choice(2,4,8)", "choice", (2, 4, 8)),
        ("train.batch_size=grid(2, 4)", "grid", (2, 4)),
        ("model.n_layers=randint(1,3)", "randint", (1, 3)),
        ("features.f0_method=choice(rmvpe, fcpe)", "choice", ("rmvpe", "fcpe")),
        ("train.epochs=2", "fixed", (2,)),
    ],
)
def test_parse_search_arg_kinds(text: str, kind: str, values: tuple) -> None:
    dim = parse_search_arg(text)
    assert dim.path == text.split("=", 1)[0]
    assert dim.kind == kind
    assert dim.values == values


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("optim.lr=loguniform(1e-5,3e-4)", "no field 'lr'"),
        ("optimizer.lr_generator=uniform(1,2)", "no field 'optimizer'"),
        ("c_adv=uniform(1,2)", "must name a section and a field"),
        ("loss=uniform(1,2)", "must name a section and a field"),
        ("loss.c_adv.x=uniform(1,2)", "is a field, not a section"),
        ("loss.c_adv=normal(1,2)", "not a known expression"),
        ("loss.c_adv=uniform(2,1)", "low < high"),
        ("loss.c_adv=uniform(1)", "exactly two bounds"),
        ("optim.lr_generator=loguniform(0,1)", "positive lower bound"),
        ("model.n_layers=randint(1.5,3)", "two integers"),
        ("train.batch_size=choice()", "at least one value"),
        ("train.batch_size=grid(2,2)", "repeats a value"),
        ("loss.c_adv", "section.field=expression"),
        ("loss.c_adv=", "empty"),
    ],
)
def test_bad_search_args_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_search_arg(text)


def test_default_space_searches_batch_size_and_c_adv(tiny_cfg: RunConfig) -> None:
    space = build_search_space(tiny_cfg)
    by_path = {dim.path: dim for dim in space.dimensions}
    assert by_path["train.batch_size"] == SearchDimension("train.batch_size", "choice", (2, 4))
    assert by_path["loss.c_adv"] == SearchDimension(
        "loss.c_adv", "uniform", (tiny_cfg.tune.c_adv_min, tiny_cfg.tune.c_adv_max)
    )
    assert space.searched_paths == ("train.batch_size", "loss.c_adv")
    assert not space.has_grid


def test_user_dimension_replaces_default_and_adds_paths(tiny_cfg: RunConfig) -> None:
    space = build_search_space(
        tiny_cfg, ["loss.c_adv=grid(0.5,1.5)", "train.batch_size=grid(2,4)", "optim.lr_generator=loguniform(1e-5,3e-4)"]
    )
    assert space.paths == ("train.batch_size", "loss.c_adv", "optim.lr_generator")
    assert space.has_grid and space.grid_size == 4
    param_space = space.to_param_space()
    assert param_space["loss.c_adv"] == {"grid_search": [0.5, 1.5]}
    assert param_space["optim.lr_generator"].lower == pytest.approx(1e-5)


def test_batch_size_that_does_not_divide_across_workers_is_rejected_up_front(tiny_cfg: RunConfig) -> None:
    assert tiny_cfg.scaling.num_workers == 2
    with pytest.raises(ConfigError, match=r"train.batch_size=choice\(2, 3\).*value 3.*does not divide"):
        build_search_space(tiny_cfg, ["train.batch_size=choice(2,3)"])


def test_every_value_of_a_batch_size_range_is_checked_against_the_workers(tiny_cfg: RunConfig) -> None:
    # 4 and 8 (the ends) divide across 2 workers; 5 and 7 inside the range do not: refused, both named
    with pytest.raises(ConfigError) as err:
        build_search_space(tiny_cfg, ["train.batch_size=randint(4,8)"])
    message = str(err.value)
    assert "\n" not in message
    assert "train.batch_size=randint(4, 8): values 5, 7 are not allowed" in message
    assert "scaling.num_workers=2" in message and "choice(4, 6, 8)" in message
    one_worker = apply_overrides(tiny_cfg, {"scaling.num_workers": 1})
    assert build_search_space(one_worker, ["train.batch_size=randint(4,8)"]).paths[0] == "train.batch_size"


def test_a_float_range_on_an_integer_field_is_refused(tiny_cfg: RunConfig) -> None:
    # both ends are whole numbers (and valid), but Tune would sample fractions in between
    with pytest.raises(ConfigError, match=r"train.batch_size=uniform\(4.0, 8.0\): value 5.52\d* is not allowed.*integer"):
        build_search_space(tiny_cfg, ["train.batch_size=uniform(4,8)"])
    assert parse_search_expression("train.epochs", "randint(1,2000)").candidates() == (1, 2, 1000, 1999, 2000)


def test_range_ends_are_validated(tiny_cfg: RunConfig) -> None:
    # c_adv must be >= 0: the lower end of the range is checked before any trial.
    with pytest.raises(ConfigError, match="loss.c_adv.*-1.0"):
        build_search_space(tiny_cfg, ["loss.c_adv=uniform(-1,1)"])


def test_cross_dimension_combinations_are_validated(tiny_cfg: RunConfig) -> None:
    # Each value is fine alone with the base config (2 workers), but batch 2 with 4 workers is not.
    with pytest.raises(ConfigError, match="does not divide"):
        build_search_space(tiny_cfg, ["train.batch_size=grid(4,2)", "scaling.num_workers=choice(2,4)"])


def test_duplicate_search_path_is_an_error(tiny_cfg: RunConfig) -> None:
    with pytest.raises(ConfigError, match="twice"):
        build_search_space(tiny_cfg, ["loss.c_adv=uniform(0,1)", "loss.c_adv=uniform(1,2)"])


def test_search_file_flat_and_nested(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(
        "optim.lr_generator: loguniform(1e-5, 3e-4)\n"
        "loss:\n  c_adv: grid(0.5, 1.5)\n"
        "train.batch_size: [2, 4]\n"
        "train.epochs: 2\n",
        encoding="utf-8",
    )
    dims = {dim.path: dim for dim in load_search_file(path)}
    assert dims["optim.lr_generator"].kind == "loguniform"
    assert dims["loss.c_adv"] == SearchDimension("loss.c_adv", "grid", (0.5, 1.5))
    assert dims["train.batch_size"] == SearchDimension("train.batch_size", "choice", (2, 4))
    assert dims["train.epochs"] == SearchDimension("train.epochs", "fixed", (2,))
    # --search wins over the file on the same path
    space = build_search_space(tiny_cfg, ["loss.c_adv=uniform(0.1,0.2)"], search_file=path)
    assert {d.path: d for d in space.dimensions}["loss.c_adv"].kind == "uniform"


def test_search_file_errors_name_the_file_and_path(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("loss.c_adverse: uniform(0,1)\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.yaml.*loss.c_adverse"):
        build_search_space(tiny_cfg, search_file=path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_search_file(tmp_path / "missing.yaml")


def test_apply_overrides_revalidates(tiny_cfg: RunConfig) -> None:
    cfg = apply_overrides(tiny_cfg, {"train.batch_size": 4, "loss.c_adv": 0.75})
    assert cfg.train.batch_size == 4 and cfg.loss.c_adv == 0.75
    assert cfg.model == tiny_cfg.model
    cfg_from_raw = apply_overrides(tiny_cfg.model_dump(mode="json"), {"loss.c_adv": 0.75})
    assert cfg_from_raw == cfg.model_copy(update={"train": tiny_cfg.train})
    with pytest.raises(ConfigError, match="train.batch_size=5"):
        apply_overrides(tiny_cfg, {"train.batch_size": 5})


def test_randint_is_inclusive_in_tune() -> None:
    domain = parse_search_expression("model.n_layers", "randint(1,3)").to_tune()
    assert (domain.lower, domain.upper) == (1, 4)


# --------------------------------------------------------------------------- resources and fail-fast run_tune


def test_run_tune_fails_before_any_trial(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    from rvc_ray.data.dataset import write_synthetic_feature_table
    from rvc_ray.tune.launch import run_tune

    cfg = apply_overrides(tiny_cfg, {"experiment.work_dir": str(tmp_path / "runs")})
    features = tmp_path / "features"
    with pytest.raises(ConfigError, match="optim.lr"):
        run_tune(cfg, features, search=["optim.lr=loguniform(1e-5,1e-3)"])
    with pytest.raises(ConfigError, match="no feature table"):
        run_tune(cfg, features)
    write_synthetic_feature_table(features, content_dim=64, sample_rate=16000, frames=[40, 40])
    with pytest.raises(ConfigError, match="no interrupted sweep"):
        run_tune(cfg, features, resume=True)
    (tmp_path / "runs" / "demo" / "tune" / "sweep").mkdir(parents=True)
    with pytest.raises(ConfigError, match="already exists"):
        run_tune(cfg, features)
    with pytest.raises(ConfigError, match="grace_period_epochs=5"):
        run_tune(apply_overrides(cfg, {"tune.grace_period_epochs": 5}), features)
