"""How many trials run at once: fixed-size vs. growing clusters, and ASHA rungs vs. saved epochs (no Ray cluster)."""

from __future__ import annotations

import json

import pytest

from rvc_ray.config import RunConfig
from rvc_ray.tune.resources import (
    ClusterGrowth,
    growth_from_autoscaler_status,
    plan_concurrency,
    trial_demand,
)
from rvc_ray.tune.space import apply_overrides
from rvc_ray.tune.trial import asha_rungs

FIXED = ClusterGrowth(False, "no autoscaler")
GROWS = ClusterGrowth(True, "an autoscaler is running")


def test_trial_demand_and_concurrency_on_a_fixed_size_cluster(tiny_cfg: RunConfig) -> None:
    demand = trial_demand([tiny_cfg], has_driver_resource=True)  # 2 workers x 0.5 CPU + a tune_driver slot
    assert demand.total == {"CPU": 1.0, "tune_driver": 1.0}

    def trials(available: dict[str, float], configured: int | None, num_trials: int = 8) -> int:
        return plan_concurrency(demand, available, configured, growth=FIXED, num_trials=num_trials).trials

    assert trials({"CPU": 2.0, "tune_driver": 4.0}, None) == 2
    assert trials({"CPU": 4.0, "tune_driver": 4.0}, 1) == 1
    assert trials({"CPU": 8.0, "tune_driver": 3.0}, None) == 3
    assert trials({"CPU": 8.0, "tune_driver": 8.0}, None, num_trials=2) == 2
    assert trials({"CPU": 0.5, "tune_driver": 4.0}, None) == 1  # never 0
    # Without a tune_driver resource each driver holds a CPU: 2 CPUs fit one trial (1 + 2 x 0.5), not two.
    no_slot = trial_demand([tiny_cfg], has_driver_resource=False)
    assert no_slot.total == {"CPU": 2.0}
    assert plan_concurrency(no_slot, {"CPU": 2.0}, None, growth=FIXED, num_trials=4).trials == 1
    gpu_cfg = apply_overrides(tiny_cfg, {"scaling.use_gpu": True, "scaling.num_workers": 2})
    gpu_demand = trial_demand([tiny_cfg, gpu_cfg], has_driver_resource=True)
    assert gpu_demand.workers == {"CPU": 1.0, "GPU": 2.0}
    plan = plan_concurrency(gpu_demand, {"CPU": 64.0, "GPU": 4.0, "tune_driver": 8.0}, None, growth=FIXED, num_trials=8)
    assert plan.trials == 2
    assert plan.reason.startswith("fixed-size cluster (no autoscaler): 2 trial(s) fit in the free resources")
    assert "tune.max_concurrent_trials=unset" in plan.reason


def test_a_growing_cluster_runs_the_configured_number_of_trials(tiny_cfg: RunConfig) -> None:
    demand = trial_demand([tiny_cfg], has_driver_resource=True)
    idle_head = {"tune_driver": 8.0}  # a 0-CPU head before the autoscaler added any worker
    plan = plan_concurrency(demand, idle_head, 4, growth=GROWS, num_trials=8)
    assert plan.trials == 4
    assert plan.reason.startswith("the cluster can grow (an autoscaler is running): tune.max_concurrent_trials=4")
    assert plan_concurrency(demand, idle_head, None, growth=GROWS, num_trials=6).trials == 6  # unset: every trial
    assert plan_concurrency(demand, idle_head, 4, growth=FIXED, num_trials=8).trials == 1  # what fits now


@pytest.mark.parametrize(
    ("status", "can_grow", "reason"),
    [
        (None, False, "no autoscaler (the GCS holds no autoscaler status)"),
        (json.dumps({"time": 1.0, "monitor_pid": 7}), False, "head was started without an autoscaling config"),
        (
            json.dumps({"autoscaler_report": {"active_nodes": {"head": 1}, "node_type_mapping": {"10.0.0.2": "gpu"}}}),
            True,
            "an autoscaler is running (node types now: gpu, head)",
        ),
        (
            json.dumps(
                {"autoscaler_report": {"active_nodes": {"node_ab12": 1}, "node_type_mapping": {"ab12": "node_ab12"}}}
            ),
            False,
            "read-only provider",
        ),
        (b"{not json", False, "unreadable"),
    ],
)
def test_cluster_growth_from_the_autoscaler_status(status: object, can_grow: bool, reason: str) -> None:
    growth = growth_from_autoscaler_status(status)  # type: ignore[arg-type]
    assert growth.can_grow is can_grow and reason in growth.reason
    assert growth_from_autoscaler_status(None, autoscaler_v2=True).can_grow


def test_cluster_growth_from_the_autoscalers_node_types() -> None:
    gpu_nodes = ({"CPU": 8.0, "GPU": 1.0}, 4)
    growth = growth_from_autoscaler_status(None, node_types=[({"CPU": 0.0}, 0), gpu_nodes])
    assert growth.can_grow and growth.reason == "the autoscaler's node types: {CPU: 8, GPU: 1} x 4"
    assert growth_from_autoscaler_status(None, node_types=[({"CPU": 4.0}, -1)]).reason.endswith("x unbounded")
    assert not growth_from_autoscaler_status(None, node_types=[({"CPU": 0.0, "tune_driver": 8.0}, 0)]).can_grow


@pytest.mark.parametrize(("grace", "factor", "max_epochs"), [(1, 2, 4), (1, 2, 6), (2, 3, 20), (1, 4, 64), (3, 2, 3)])
def test_asha_rungs_are_the_epochs_where_rays_asha_stops_trials(grace: int, factor: int, max_epochs: int) -> None:
    from ray.tune.schedulers import ASHAScheduler

    scheduler = ASHAScheduler(time_attr="epoch", max_t=max_epochs, grace_period=grace, reduction_factor=factor)
    milestones = sorted(milestone for milestone, _ in scheduler._brackets[0]._rungs if milestone < max_epochs)
    assert asha_rungs(grace, factor, max_epochs) == milestones


def test_asha_rungs_that_are_not_saved_epochs_are_logged(tiny_cfg: RunConfig, caplog: pytest.LogCaptureFixture) -> None:
    from rvc_ray.tune.trial import warn_unsaved_rungs

    asha = {"tune.scheduler": "asha", "tune.grace_period_epochs": 1, "tune.reduction_factor": 2}
    cfg = apply_overrides(tiny_cfg, {**asha, "train.epochs": 8, "train.save_every_epochs": 2})
    with caplog.at_level("WARNING", logger="rvc_ray.tune"):
        warn_unsaved_rungs(cfg, 8)  # rungs 1, 2, 4: epoch 1 is not saved
    assert "epoch(s) 1, which are not saved (train.save_every_epochs=2)" in caplog.text
    assert "set train.save_every_epochs=1" in caplog.text
    caplog.clear()
    saved = apply_overrides(cfg, {"tune.grace_period_epochs": 2})  # rungs 2, 4: both saved
    with caplog.at_level("WARNING", logger="rvc_ray.tune"):
        warn_unsaved_rungs(saved, 8)
    assert caplog.text == ""
