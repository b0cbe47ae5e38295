"""Run a hyperparameter sweep with Ray Tune: every trial is a full distributed training run.

:func:`run_tune` validates the search space against the config (no trial starts with a bad value),
sizes the number of concurrent trials so that trial drivers and their Train workers can never
deadlock, runs the sweep (ASHA by default) and writes the results (see :mod:`rvc_ray.tune.results`).

Layout under ``<run>/tune/``::

    sweep/                   Tune's experiment directory (what ``resume=True`` restores)
    trials/trial_<id>/       each trial's Ray Train run: checkpoints, tensorboard/, metrics.jsonl, voices/
    sweep_config.json        the base config and search space (a resumed sweep must match it)
    results.csv, results.json, results.png
    best/                    best_config.yaml, the best trial's voice (+ index) and checkpoint/
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rvc_ray.config import ConfigError, RunConfig
from rvc_ray.layout import RunLayout
from rvc_ray.tune.results import (
    TrialRecord,
    collect_trial_records,
    copy_best_trial,
    plot_results,
    select_best,
    write_best_config,
    write_results_table,
)
from rvc_ray.tune.space import SearchSpace, apply_overrides, build_search_space

__all__ = [
    "TUNE_DRIVER_RESOURCE",
    "SweepPlan",
    "TrialDemand",
    "TuneResult",
    "plan_concurrency",
    "plan_sweep",
    "run_tune",
    "trial_demand",
    "write_sweep_results",
]

log = logging.getLogger("rvc_ray.tune")

TUNE_DRIVER_RESOURCE = "tune_driver"
SWEEP_NAME = "sweep"


@dataclass(frozen=True)
class TuneResult:
    """What a sweep produced (paths are absolute; ``best_*`` are None when every trial failed)."""

    sweep_dir: Path
    results_csv: Path
    results_json: Path
    plot_path: Path
    best_config_path: Path | None
    best_voice_path: Path | None
    best_checkpoint_path: Path | None
    best_trial_id: str | None
    best_metrics: dict[str, Any] = field(default_factory=dict)
    num_trials: int = 0
    num_failed: int = 0
    num_early_stopped: int = 0
    max_concurrent_trials: int = 1


@dataclass(frozen=True)
class TrialDemand:
    """Resources one trial holds: its driver (a ``tune_driver`` slot, or 1 CPU) plus its Train workers."""

    driver: dict[str, float]
    workers: dict[str, float]

    @property
    def total(self) -> dict[str, float]:
        merged = dict(self.workers)
        for key, value in self.driver.items():
            merged[key] = merged.get(key, 0.0) + value
        return merged


def trial_demand(configs: Sequence[RunConfig], *, has_driver_resource: bool) -> TrialDemand:
    """The largest per-trial demand over ``configs`` (the scaling section may itself be searched)."""
    cpus = max(c.scaling.num_workers * c.scaling.cpus_per_worker for c in configs)
    gpus = max(c.scaling.num_workers * c.scaling.gpus_per_worker if c.scaling.use_gpu else 0.0 for c in configs)
    workers = {"CPU": cpus, **({"GPU": gpus} if gpus > 0 else {})}
    driver = {TUNE_DRIVER_RESOURCE: 1.0} if has_driver_resource else {"CPU": 1.0}
    return TrialDemand(driver=driver, workers=workers)


def plan_concurrency(demand: TrialDemand, available: Mapping[str, float], configured: int | None) -> int:
    """How many trials may run at once: what the free resources hold, capped by ``tune.max_concurrent_trials``.

    Every trial's driver and all of its Train workers must fit together, so trial drivers can never hold
    the resources their own workers wait for. At least 1 (on 2 CPUs, trials run one after another).
    """
    fits = math.inf
    for key, needed in demand.total.items():
        if needed > 0:
            fits = min(fits, math.floor(available.get(key, 0.0) / needed + 1e-9))
    limit = fits if configured is None else min(fits, configured)
    return max(1, int(limit)) if math.isfinite(limit) else max(1, configured or 1)


def _scaling_variants(cfg: RunConfig, space: SearchSpace) -> list[RunConfig]:
    """Configs for every combination of the searched ``scaling.*`` / ``train.epochs`` candidates."""
    dims = [d for d in space.dimensions if d.path.startswith("scaling.") or d.path == "train.epochs"]
    if not dims:
        return [apply_overrides(cfg, {})]
    combos = itertools.islice(itertools.product(*(d.candidates() for d in dims)), 4096)
    return [apply_overrides(cfg, dict(zip((d.path for d in dims), combo, strict=True))) for combo in combos]


def _check_features(features_dir: Path) -> None:
    if not any((features_dir / "table").glob("part-*.parquet")):
        raise ConfigError(
            f"no feature table in {features_dir / 'table'} (part-*.parquet); run the extract stage first "
            "(every trial trains on the same prepared features)"
        )


def _sweep_identity(cfg: RunConfig, space: SearchSpace) -> dict[str, Any]:
    return {"config": cfg.model_dump(mode="json"), "search": [d.describe() for d in space.dimensions]}


def _check_resume_matches(identity_path: Path, identity: dict[str, Any]) -> None:
    if not identity_path.is_file():
        return
    saved = json.loads(identity_path.read_text(encoding="utf-8"))
    if saved.get("search") != identity["search"]:
        raise ConfigError(
            f"resume: the sweep in {identity_path.parent} searched {saved.get('search')}, but this call searches "
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


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _trial_driver(
    config: dict[str, Any], *, base_config: dict[str, Any], features_dir: str, index_path: str | None, trials_dir: str
) -> None:
    """One Tune trial = one Ray Train run of the base config with this trial's sampled values."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from rvc_ray.train.launch import build_torch_trainer

    cfg = apply_overrides(base_config, config)
    trial_id = ray.tune.get_context().get_trial_id()
    trainer = build_torch_trainer(
        cfg,
        Path(features_dir),
        Path(index_path) if index_path else None,
        run_name=f"trial_{trial_id}",  # stable per trial: a restored trial resumes its own checkpoints
        storage_path=Path(trials_dir),
        callbacks=[TuneReportCallback()],
    )
    trainer.fit()


def _build_scheduler(cfg: RunConfig, max_epochs: int) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.tune.scheduler == "fifo":
        return FIFOScheduler()
    if cfg.tune.grace_period_epochs > max_epochs:
        raise ConfigError(
            f"tune.grace_period_epochs={cfg.tune.grace_period_epochs} is longer than the training "
            f"(train.epochs={max_epochs}); ASHA could never stop a trial"
        )
    return ASHAScheduler(
        # the reported epoch, not Tune's training_iteration: a trial restarted by a resumed sweep continues
        # its Train checkpoint at epoch k while Tune's iteration count starts again at 1
        time_attr="epoch",
        max_t=max_epochs,
        grace_period=cfg.tune.grace_period_epochs,
        reduction_factor=cfg.tune.reduction_factor,
    )


@dataclass(frozen=True)
class SweepPlan:
    """Everything decided (and validated) before the cluster is touched."""

    cfg: RunConfig
    space: SearchSpace
    features_dir: Path
    index_path: Path | None
    sweep_dir: Path
    variants: tuple[RunConfig, ...]
    scheduler: Any
    resume: bool

    @property
    def experiment_path(self) -> Path:
        return self.sweep_dir / SWEEP_NAME

    @property
    def trials_dir(self) -> Path:
        return self.sweep_dir / "trials"

    @property
    def identity_path(self) -> Path:
        return self.sweep_dir / "sweep_config.json"


def plan_sweep(
    cfg: RunConfig,
    features_dir: Path,
    *,
    search: Sequence[str] = (),
    search_file: Path | None = None,
    resume: bool = False,
    index_path: Path | None = None,
) -> SweepPlan:
    """Validate the search space, the features and the sweep directory; raise ConfigError on any problem."""
    from ray.tune import Tuner

    space = build_search_space(cfg, search, search_file)
    features_dir = Path(features_dir).resolve()
    _check_features(features_dir)
    layout = RunLayout.from_config(cfg)
    if index_path is None and layout.index_path.is_file():
        index_path = layout.index_path
    variants = tuple(_scaling_variants(cfg, space))
    plan = SweepPlan(
        cfg=cfg,
        space=space,
        features_dir=features_dir,
        index_path=Path(index_path).resolve() if index_path is not None else None,
        sweep_dir=layout.tune_dir,
        variants=variants,
        scheduler=_build_scheduler(cfg, max(v.train.epochs for v in variants)),
        resume=resume,
    )
    if resume:
        if not (plan.experiment_path.exists() and Tuner.can_restore(str(plan.experiment_path))):
            raise ConfigError(f"resume: no interrupted sweep to resume in {plan.experiment_path}")
        _check_resume_matches(plan.identity_path, _sweep_identity(cfg, space))
    elif plan.experiment_path.exists():
        raise ConfigError(
            f"a sweep already exists in {plan.experiment_path}; resume it (--resume), or choose another "
            "experiment.name, or delete that directory"
        )
    return plan


def _build_tuner(plan: SweepPlan, demand: TrialDemand, concurrency: int) -> Any:
    import ray.tune

    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(
            _trial_driver,
            base_config=plan.cfg.model_dump(mode="json"),
            features_dir=str(plan.features_dir),
            index_path=str(plan.index_path) if plan.index_path is not None else None,
            trials_dir=str(plan.trials_dir),
        ),
        demand.driver,
    )
    if plan.resume:
        return ray.tune.Tuner.restore(
            str(plan.experiment_path), trainable=trainable, resume_unfinished=True, resume_errored=False
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
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=ray.tune.RunConfig(
            name=SWEEP_NAME,
            storage_path=str(plan.sweep_dir),
            failure_config=ray.tune.FailureConfig(max_failures=0),  # a failed trial is a result, not retried
            verbose=1,
        ),
    )


def run_tune(
    cfg: RunConfig,
    features_dir: Path,
    *,
    search: Sequence[str] = (),
    search_file: Path | None = None,
    resume: bool = False,
    index_path: Path | None = None,
) -> TuneResult:
    """Run (or resume) the sweep of ``cfg`` on the connected Ray cluster and write its results.

    Args:
        cfg: the base config; ``cfg.tune`` holds the default search ranges, scheduler and budget.
        features_dir: the extract stage's output, shared by every trial.
        search: extra ``section.field=expression`` dimensions (see :mod:`rvc_ray.tune.space`).
        search_file: a YAML ``{section.field: expression}`` search space.
        resume: continue the interrupted sweep in ``<run>/tune/sweep`` (same config and search space).
        index_path: FAISS index copied beside the voices (default: the run's index, if it exists).

    Raises:
        ConfigError: a bad search path/expression/value, missing features, or a resume that does not match,
            all before any trial starts.
    """
    import ray

    from rvc_ray.cluster import ensure_ray

    plan = plan_sweep(
        cfg, features_dir, search=search, search_file=search_file, resume=resume, index_path=index_path
    )
    ensure_ray()
    has_driver_resource = ray.cluster_resources().get(TUNE_DRIVER_RESOURCE, 0.0) >= 1.0
    demand = trial_demand(plan.variants, has_driver_resource=has_driver_resource)
    concurrency = plan_concurrency(demand, ray.available_resources(), cfg.tune.max_concurrent_trials)
    if not has_driver_resource:
        log.warning(
            "the cluster has no '%s' resource: each trial driver holds 1 CPU (start the head with "
            "--resources='{\"%s\": 8}' to keep all CPUs for training workers)",
            TUNE_DRIVER_RESOURCE,
            TUNE_DRIVER_RESOURCE,
        )
    log.warning(
        "rvc-ray tune %s: %s; up to %d trial(s) at once (each needs %s)",
        cfg.experiment.name,
        ", ".join(d.describe() for d in plan.space.dimensions),
        concurrency,
        demand.total,
    )
    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    plan.identity_path.write_text(json.dumps(_sweep_identity(cfg, plan.space), indent=2), encoding="utf-8")
    result_grid = _build_tuner(plan, demand, concurrency).fit()
    return write_sweep_results(
        cfg, plan.space, result_grid, sweep_dir=plan.sweep_dir, trials_dir=plan.trials_dir,
        index_path=plan.index_path, concurrency=concurrency,
    )  # fmt: skip


def write_sweep_results(
    cfg: RunConfig,
    space: SearchSpace,
    result_grid: Any,
    *,
    sweep_dir: Path,
    trials_dir: Path,
    index_path: Path | None = None,
    concurrency: int = 1,
) -> TuneResult:
    """Table, plot and best-trial files of a finished sweep (``result_grid`` = ``Tuner.fit()``)."""
    metric = cfg.tune.metric
    records = collect_trial_records(
        result_grid,
        metric=metric,
        max_epochs=lambda config: int(config.get("train.epochs") or cfg.train.epochs),
        paths=space.paths,
        train_run_dir_of=lambda trial_id: trials_dir / f"trial_{trial_id}",
    )
    results_csv, results_json = sweep_dir / "results.csv", sweep_dir / "results.json"
    write_results_table(records, results_csv, results_json, metric=metric, paths=space.paths)
    plot_path = plot_results(records, sweep_dir / "results.png", metric=metric)
    best = select_best(records)
    best_dir = sweep_dir / "best"
    if best_dir.exists():
        shutil.rmtree(best_dir)  # a resumed sweep may have a different winner
    best_config_path = best_voice = best_checkpoint = None
    if best is not None:
        winner_cfg = apply_overrides(cfg, best.config)
        best_config_path = write_best_config(winner_cfg, best, best_dir / "best_config.yaml", metric=metric)
        best_voice, best_checkpoint = copy_best_trial(best, best_dir, index_path=index_path)
    else:
        log.warning("rvc-ray tune: no trial reported a finite %s; see %s", metric, results_csv)
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
    if best is None:
        return {}
    return {metric: best.score, "epochs": best.epochs, "config": dict(best.config), **best.extra_metrics}
