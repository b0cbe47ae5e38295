"""One trial of a sweep (a full Ray Train run of the base config with the trial's values) and the scheduler
that may stop it early (ASHA, at its rungs)."""

from __future__ import annotations

import logging
import math
from typing import Any

from rvc_ray.config import ConfigError, RunConfig
from rvc_ray.tune.space import apply_overrides

__all__ = ["asha_rungs", "build_scheduler", "trial_dirname", "trial_driver", "warn_unsaved_rungs"]

log = logging.getLogger("rvc_ray.tune")


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def trial_driver(
    config: dict[str, Any], *, base_config: dict[str, Any], features_dir: str, index_path: str | None, trials_dir: str
) -> None:
    """One Tune trial = one Ray Train run of the base config with this trial's sampled values.

    An out-of-memory error in the run fails the trial at once (no Ray Train retries, see
    :mod:`rvc_ray.tune.out_of_memory`); Tune records it as failed and runs the next trial.
    """
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from rvc_ray.train.launch import build_torch_trainer
    from rvc_ray.tune.out_of_memory import FailFastOnOutOfMemory

    cfg = apply_overrides(base_config, config)
    trial_id = ray.tune.get_context().get_trial_id()
    trainer = build_torch_trainer(
        cfg,
        features_dir,
        index_path,
        run_name=f"trial_{trial_id}",  # stable per trial: a restored trial resumes its own checkpoints
        storage_path=trials_dir,  # a local path or a URI, like every location of the sweep
        callbacks=[TuneReportCallback(), FailFastOnOutOfMemory()],
    )
    trainer.fit()


def asha_rungs(grace_period: int, reduction_factor: int, max_epochs: int) -> list[int]:
    """The epochs at which ASHA may stop a trial (its rungs below ``max_epochs``), as Ray's ASHA computes them."""
    count = int(math.log(max_epochs / grace_period) / math.log(reduction_factor) + 1 + 1e-9)
    return sorted(r for r in (grace_period * reduction_factor**k for k in range(count)) if r < max_epochs)


def warn_unsaved_rungs(cfg: RunConfig, max_epochs: int) -> None:
    """Log when ASHA may stop trials at epochs that are not saved: those trials are scored earlier (or not)."""
    if cfg.tune.scheduler != "asha":
        return
    every = cfg.train.save_every_epochs
    unsaved = [r for r in asha_rungs(cfg.tune.grace_period_epochs, cfg.tune.reduction_factor, max_epochs) if r % every]
    if unsaved:
        log.warning(
            "rvc-ray tune: ASHA may stop trials at epoch(s) %s, which are not saved (train.save_every_epochs=%d); "
            "a trial stopped there is scored at its last saved epoch, or not at all. To score every stopped trial "
            "at its stopping epoch, set train.save_every_epochs=%d",
            ", ".join(map(str, unsaved)),
            every,
            math.gcd(*unsaved, every),
        )


def build_scheduler(cfg: RunConfig, max_epochs: int) -> Any:
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
