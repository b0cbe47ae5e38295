"""Run a hyperparameter sweep with Ray Tune: every trial is a full distributed training run.

:func:`run_tune` validates the search space against the config (no trial starts with a bad value),
sizes the number of concurrent trials so that trial drivers and their Train workers can never
deadlock, runs the sweep (ASHA by default) and writes the results (see :mod:`rvc_ray.tune.results`).

Layout under ``<run>/tune/`` (a local path or a URI such as ``s3://bucket/runs/demo/tune``)::

    sweep/                   Tune's experiment directory (what ``resume=True`` restores)
    trials/trial_<id>/       each trial's Ray Train run: epoch_<E>/ checkpoints, tensorboard/, metrics.jsonl, voices/
    sweep_config.json        the base config and search space (a resumed sweep must match it)
    results.csv, results.json, results.png
    best/                    best_config.yaml, the best trial's scored-epoch voice (+ index) and checkpoint/

A trial is scored at its latest *saved* epoch, so the voice in ``best/`` is the one its score belongs to
(:mod:`rvc_ray.tune.results`). A trial that runs out of memory fails at once, without Ray Train retries
(:mod:`rvc_ray.tune.out_of_memory`).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rvc_ray import storage
from rvc_ray.config import ConfigError, RunConfig
from rvc_ray.layout import RunLayout
from rvc_ray.tune.plot import plot_results
from rvc_ray.tune.resources import (
    TUNE_DRIVER_RESOURCE,
    ConcurrencyPlan,
    detect_cluster_growth,
    plan_concurrency,
    trial_demand,
)
from rvc_ray.tune.results import (
    TrialRecord,
    collect_trial_records,
    copy_best_trial,
    select_best,
    write_best_config,
    write_results_table,
)
from rvc_ray.tune.space import SearchSpace, apply_overrides, build_search_space
from rvc_ray.tune.trial import build_scheduler, trial_dirname, trial_driver, warn_unsaved_rungs

__all__ = [
    "SweepPlan",
    "TuneResult",
    "plan_sweep",
    "run_tune",
    "write_sweep_results",
]

log = logging.getLogger("rvc_ray.tune")

SWEEP_NAME = "sweep"


@dataclass(frozen=True)
class TuneResult:
    """What a sweep produced, as locations (absolute local paths or URIs; ``best_*`` are None when no trial
    was scored)."""

    sweep_dir: str
    results_csv: str
    results_json: str
    plot_path: str
    best_config_path: str | None
    best_voice_path: str | None
    best_checkpoint_path: str | None
    best_trial_id: str | None
    best_metrics: dict[str, Any] = field(default_factory=dict)
    num_trials: int = 0
    num_failed: int = 0
    num_early_stopped: int = 0
    max_concurrent_trials: int = 1


def _scaling_variants(cfg: RunConfig, space: SearchSpace) -> list[RunConfig]:
    """Configs for every combination of the searched ``scaling.*`` / ``train.epochs`` candidates."""
    dims = [d for d in space.dimensions if d.path.startswith("scaling.") or d.path == "train.epochs"]
    if not dims:
        return [apply_overrides(cfg, {})]
    combos = itertools.islice(itertools.product(*(d.candidates() for d in dims)), 4096)
    return [apply_overrides(cfg, dict(zip((d.path for d in dims), combo, strict=True))) for combo in combos]


def _check_features(features: str) -> None:
    table = storage.join(features, "table")
    names = [p.replace("\\", "/").rsplit("/", 1)[-1] for p in storage.list_files(table, suffix=".parquet")]
    if not any(name.startswith("part-") for name in names):
        raise ConfigError(
            f"no feature table in {table} (part-*.parquet); run the extract stage first "
            "(every trial trains on the same prepared features)"
        )


def _sweep_identity(cfg: RunConfig, space: SearchSpace) -> dict[str, Any]:
    return {"config": cfg.model_dump(mode="json"), "search": [d.describe() for d in space.dimensions]}


def _check_resume_matches(identity_path: str, identity: dict[str, Any]) -> None:
    if not storage.exists(identity_path):
        return
    saved = json.loads(storage.read_text(identity_path))
    if saved.get("search") != identity["search"]:
        raise ConfigError(
            f"resume: the sweep of {identity_path} searched {saved.get('search')}, but this call searches "
            f"{identity['search']}; resume with the same --search/--search-file (or start a new experiment.name)"
        )
    if saved.get("config") != identity["config"]:
        changed = sorted(
            section for section in identity["config"] if saved["config"].get(section) != identity["config"][section]
        )
        raise ConfigError(
            f"resume: the config differs from the interrupted sweep's ({identity_path}) in section(s) "
            f"{', '.join(changed)}; resume with the same job file and --set overrides"
        )


@dataclass(frozen=True)
class SweepPlan:
    """Everything decided (and validated) before the cluster is touched; directories are locations."""

    cfg: RunConfig
    space: SearchSpace
    features_dir: str
    index_path: str | None
    sweep_dir: str
    variants: tuple[RunConfig, ...]
    scheduler: Any
    resume: bool

    @property
    def experiment_path(self) -> str:
        return storage.join(self.sweep_dir, SWEEP_NAME)

    @property
    def trials_dir(self) -> str:
        return storage.join(self.sweep_dir, "trials")

    @property
    def identity_path(self) -> str:
        return storage.join(self.sweep_dir, "sweep_config.json")

    @property
    def num_trials(self) -> int:
        return self.cfg.tune.num_samples * self.space.grid_size


def _default_index(cfg: RunConfig) -> str | None:
    index = RunLayout.from_config(cfg).index_location
    return index if storage.exists(index) else None


def plan_sweep(
    cfg: RunConfig,
    features_dir: str | Path,
    *,
    search: Sequence[str] = (),
    search_file: Path | None = None,
    resume: bool = False,
    index_path: str | Path | None = None,
) -> SweepPlan:
    """Validate the search space, the features and the sweep directory; raise ConfigError on any problem."""
    from ray.tune import Tuner

    space = build_search_space(cfg, search, search_file)
    features = storage.normalize_location(features_dir)
    _check_features(features)
    variants = tuple(_scaling_variants(cfg, space))
    max_epochs = max(v.train.epochs for v in variants)
    plan = SweepPlan(
        cfg=cfg,
        space=space,
        features_dir=features,
        index_path=storage.normalize_location(index_path) if index_path is not None else _default_index(cfg),
        sweep_dir=RunLayout.from_config(cfg).tune_location,
        variants=variants,
        scheduler=build_scheduler(cfg, max_epochs),
        resume=resume,
    )
    if resume:
        if not (storage.exists(plan.experiment_path) and Tuner.can_restore(plan.experiment_path)):
            raise ConfigError(f"resume: no interrupted sweep to resume in {plan.experiment_path}")
        _check_resume_matches(plan.identity_path, _sweep_identity(cfg, space))
    elif storage.exists(plan.experiment_path):
        raise ConfigError(
            f"a sweep already exists in {plan.experiment_path}; resume it (--resume), or choose another "
            "experiment.name, or delete that directory"
        )
    warn_unsaved_rungs(cfg, max_epochs)
    return plan


def _build_tuner(plan: SweepPlan, driver_resources: dict[str, float], concurrency: int) -> Any:
    import ray.tune

    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(
            trial_driver,
            base_config=plan.cfg.model_dump(mode="json"),
            features_dir=plan.features_dir,
            index_path=plan.index_path,
            trials_dir=plan.trials_dir,
        ),
        driver_resources,
    )
    if plan.resume:
        return ray.tune.Tuner.restore(
            plan.experiment_path, trainable=trainable, resume_unfinished=True, resume_errored=False
        )
    tune_cfg = plan.cfg.tune
    return ray.tune.Tuner(
        trainable,
        param_space=plan.space.to_param_space(),
        tune_config=ray.tune.TuneConfig(
            metric=tune_cfg.metric,
            mode="min",
            num_samples=tune_cfg.num_samples,
            max_concurrent_trials=concurrency,
            scheduler=plan.scheduler,
            time_budget_s=tune_cfg.time_budget_s,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=ray.tune.RunConfig(
            name=SWEEP_NAME,
            storage_path=plan.sweep_dir,
            failure_config=ray.tune.FailureConfig(max_failures=0),  # a failed trial is a result, not retried
            verbose=1,
        ),
    )


def _plan_trials_at_once(plan: SweepPlan) -> tuple[dict[str, float], ConcurrencyPlan]:
    """(a trial driver's resources, how many trials run at once and why) on the connected cluster."""
    import ray

    has_driver_resource = ray.cluster_resources().get(TUNE_DRIVER_RESOURCE, 0.0) >= 1.0
    demand = trial_demand(plan.variants, has_driver_resource=has_driver_resource)
    if not has_driver_resource:
        log.warning(
            "the cluster has no '%s' resource: each trial driver holds 1 CPU (start the head with "
            "--resources='{\"%s\": 8}' to keep all CPUs for training workers)",
            TUNE_DRIVER_RESOURCE,
            TUNE_DRIVER_RESOURCE,
        )
    concurrency = plan_concurrency(
        demand,
        ray.available_resources(),
        plan.cfg.tune.max_concurrent_trials,
        growth=detect_cluster_growth(),
        num_trials=plan.num_trials,
    )
    return demand.driver, concurrency


def run_tune(
    cfg: RunConfig,
    features_dir: str | Path,
    *,
    search: Sequence[str] = (),
    search_file: Path | None = None,
    resume: bool = False,
    index_path: str | Path | None = None,
) -> TuneResult:
    """Run (or resume) the sweep of ``cfg`` on the connected Ray cluster and write its results.

    Args:
        cfg: the base config; ``cfg.tune`` holds the default search ranges, scheduler and budget.
        features_dir: the extract stage's output, shared by every trial (a local path or a URI).
        search: extra ``section.field=expression`` dimensions (see :mod:`rvc_ray.tune.space`).
        search_file: a YAML ``{section.field: expression}`` search space.
        resume: continue the interrupted sweep in ``<run>/tune/sweep`` (same config and search space).
        index_path: FAISS index copied beside the voices (default: the run's index, if it exists).

    Raises:
        ConfigError: a bad search path/expression/value, missing features, or a resume that does not match,
            all before any trial starts.
        StorageError: ``experiment.work_dir`` cannot be written from every node (before any trial starts).
    """
    from rvc_ray.cluster import check_location_on_cluster, ensure_ray

    plan = plan_sweep(
        cfg, features_dir, search=search, search_file=search_file, resume=resume, index_path=index_path
    )
    ensure_ray()
    # every trial runs wherever the cluster places it: the sweep's storage must work from every node
    check_location_on_cluster(RunLayout.from_config(cfg).root_location, "experiment.work_dir")
    driver_resources, concurrency = _plan_trials_at_once(plan)
    log.warning(
        "rvc-ray tune %s: %s; up to %d trial(s) at once: %s",
        cfg.experiment.name,
        ", ".join(d.describe() for d in plan.space.dimensions),
        concurrency.trials,
        concurrency.reason,
    )
    storage.write_text(plan.identity_path, json.dumps(_sweep_identity(cfg, plan.space), indent=2))
    result_grid = _build_tuner(plan, driver_resources, concurrency.trials).fit()
    return write_sweep_results(
        cfg, plan.space, result_grid, sweep_dir=plan.sweep_dir, trials_dir=plan.trials_dir,
        index_path=plan.index_path, concurrency=concurrency.trials,
    )  # fmt: skip


def write_sweep_results(
    cfg: RunConfig,
    space: SearchSpace,
    result_grid: Any,
    *,
    sweep_dir: str,
    trials_dir: str,
    index_path: str | None = None,
    concurrency: int = 1,
) -> TuneResult:
    """Table, plot and best-trial files of a finished sweep (``result_grid`` = ``Tuner.fit()``)."""
    metric = cfg.tune.metric
    records = collect_trial_records(
        result_grid,
        metric=metric,
        max_epochs=lambda config: int(config.get("train.epochs") or cfg.train.epochs),
        paths=space.paths,
        train_run_dir_of=lambda trial_id: storage.join(trials_dir, f"trial_{trial_id}"),
    )
    results_csv, results_json = storage.join(sweep_dir, "results.csv"), storage.join(sweep_dir, "results.json")
    write_results_table(records, results_csv, results_json, metric=metric, paths=space.paths)
    plot_path = plot_results(records, storage.join(sweep_dir, "results.png"), metric=metric)
    best = select_best(records)
    best_dir = storage.join(sweep_dir, "best")
    storage.remove(best_dir)  # a resumed sweep may have a different winner
    best_config_path = best_voice = best_checkpoint = None
    if best is not None:
        winner_cfg = apply_overrides(cfg, best.config)
        best_config_path = write_best_config(
            winner_cfg, best, storage.join(best_dir, "best_config.yaml"), metric=metric
        )
        best_voice, best_checkpoint = copy_best_trial(best, best_dir, index_path=index_path)
    else:
        log.warning("rvc-ray tune: no trial has a finite %s at a saved epoch; see %s", metric, results_csv)
    return TuneResult(
        sweep_dir=sweep_dir,
        results_csv=results_csv,
        results_json=results_json,
        plot_path=plot_path,
        best_config_path=best_config_path,
        best_voice_path=best_voice,
        best_checkpoint_path=best_checkpoint,
        best_trial_id=best.trial_id if best is not None else None,
        best_metrics=_best_metrics(best, metric),
        num_trials=len(records),
        num_failed=sum(r.status == "failed" for r in records),
        num_early_stopped=sum(r.status == "early_stopped" for r in records),
        max_concurrent_trials=concurrency,
    )


def _best_metrics(best: TrialRecord | None, metric: str) -> dict[str, Any]:
    if best is None or best.scored is None:
        return {}
    return {
        metric: best.score,
        "scored_epoch": best.scored.epoch,
        "epochs": best.epochs,
        "config": dict(best.config),
        **best.extra_metrics,
    }
