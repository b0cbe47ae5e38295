"""Collectives: every one the training loop issues goes through rvc_ray.train.collectives, on the device it trains on.

NCCL serves only CUDA tensors; a loop that all-reduces a CPU tensor crashes the first multi-GPU run. On a
CPU machine the loop is run inside a real gloo process group (world size 1: the helper does not skip
collectives for one worker, exactly as with DDP forced on) while every ``torch.distributed`` collective
is recorded with its tensor's device and the module that called it.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from rvc_ray.train import collectives

COLLECTIVE_NAMES = (
    "all_reduce",
    "broadcast",
    "barrier",
    "all_gather",
    "all_gather_object",
    "broadcast_object_list",
    "reduce",
    "gather",
    "scatter",
    "reduce_scatter",
    "all_to_all",
)


@pytest.fixture
def gloo_group(tmp_path: Path) -> Iterator[None]:
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.fixture
def recorded() -> Iterator[list[dict[str, Any]]]:
    """Every torch.distributed collective called from Python in this process (restored afterwards)."""
    originals = {name: getattr(dist, name) for name in COLLECTIVE_NAMES}
    try:
        yield _record_collectives()
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)


def test_helpers_reduce_on_the_given_device(gloo_group: None) -> None:
    assert collectives.sum_across_workers([1.0, 2.5], "cpu") == [1.0, 2.5]
    assert collectives.min_across_workers(7.0, "cpu") == 7.0
    assert collectives.any_across_workers(True, "cpu") is True
    assert collectives.any_across_workers(False, "cpu") is False
    assert collectives.broadcast_from_rank_zero(3.0, "cpu") == 3.0
    collectives.barrier("cpu")


def test_helpers_are_the_identity_without_a_process_group(recorded: list[dict[str, Any]]) -> None:
    assert not collectives.distributed_is_active()
    assert collectives.sum_across_workers([1, 2], "cpu") == [1.0, 2.0]
    assert collectives.any_across_workers(True, "cuda") is True  # no tensor is built: no device needed
    assert recorded == []


def test_a_group_without_a_backend_for_the_training_device_is_refused_clearly(tmp_path: Path) -> None:
    """The NCCL situation on a CPU box: a group whose only backend serves cuda, tensors on cpu."""
    dist.init_process_group("cuda:gloo", store=dist.FileStore(str(tmp_path / "s"), 1), rank=0, world_size=1)
    try:
        with pytest.raises(RuntimeError, match="No backend type associated with device type cpu"):
            dist.all_reduce(torch.zeros(1))  # what the loop did before every collective went through the helper
        with pytest.raises(RuntimeError, match=r"serves only cuda tensors, but training runs on cpu"):
            collectives.sum_across_workers([1.0], "cpu")
    finally:
        dist.destroy_process_group()


def _record_collectives() -> list[dict[str, Any]]:
    """Wrap every torch.distributed collective of this process so that it records name, tensor device and
    the file of its caller."""
    calls: list[dict[str, Any]] = []
    for name in COLLECTIVE_NAMES:
        original = getattr(dist, name)

        def wrapper(*args: Any, __name: str = name, __original: Any = original, **kwargs: Any) -> Any:
            tensor = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
            caller = inspect.stack()[1].filename
            calls.append({"name": __name, "device": None if tensor is None else str(tensor.device), "caller": caller})
            return __original(*args, **kwargs)

        setattr(dist, name, wrapper)
    return calls


FIT_OVERRIDES = [
    "train.epochs=1",
    "train.batch_size=auto",
    "train.auto_batch_size_max=3",
    "scaling.num_workers=1",
    "train.log_every_steps=1",
    "train.early_stop_patience=5",
    "train.num_preview_clips=0",
    "train.use_ddp_for_one_worker=true",
]


def _fit_in_gloo_group(rank: int, world: int, tmp: str) -> None:
    """One process of the 2-process check: a gloo group of ``world`` ranks, then the loop in Ray Train's
    local mode (each process runs the whole loop on the same data, so their collectives pair up)."""
    from rvc_ray.config import load_run_config
    from rvc_ray.train.launch import build_torch_trainer

    dist.init_process_group("gloo", store=dist.FileStore(f"{tmp}/store", world), rank=rank, world_size=world)
    calls = _record_collectives()
    cfg = load_run_config("tiny_cpu", FIT_OVERRIDES)
    storage = Path(tmp) / f"train{rank}"
    build_torch_trainer(cfg, Path(tmp) / "features", run_name="local", storage_path=storage, local_mode=True).fit()
    Path(tmp, f"calls{rank}.json").write_text(json.dumps(calls))


@pytest.mark.slow
def test_every_collective_of_a_two_process_fit_runs_through_the_helper_on_the_training_device(tmp_path: Path) -> None:
    """Two processes in one gloo group run the whole loop (models in DDP, forced on for a "one-worker" Ray
    context): metrics, validation sums, health flags, early stop, the auto batch size and the final barrier
    are collectives, every one issued by the helper on the training device. ``train.batch_size=auto`` resolves (on CPU nothing runs out of memory, so the search
    stops at ``train.auto_batch_size_max``) and the batch found is stored with the run."""
    import torch.multiprocessing as mp
    import yaml

    from rvc_ray.config import load_run_config
    from rvc_ray.data.dataset import write_synthetic_feature_table

    cfg = load_run_config("tiny_cpu", FIT_OVERRIDES)
    write_synthetic_feature_table(
        tmp_path / "features",
        content_dim=cfg.model.content_dim,
        sample_rate=cfg.audio.sample_rate,
        frames=[32, 30, 34, 28, 30],
        splits=["train"] * 4 + ["val"],
    )
    mp.spawn(_fit_in_gloo_group, args=(2, str(tmp_path)), nprocs=2, join=True)

    run_dir = tmp_path / "train0" / "local"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in records if r["kind"] == "start")
    assert (start["global_batch_size"], start["batch_size_source"], start["precision"]) == (3, "auto", "fp32")
    assert start["ddp"] is True  # train.use_ddp_for_one_worker: DDP's gradient all-reduce ran across the two ranks
    assert [r["global_batch_size"] for r in records if r["kind"] == "epoch"] == [3]
    saved = yaml.safe_load((run_dir / "epoch_00001" / "config.yaml").read_text())
    assert saved["train"]["batch_size"] == 3

    for rank in range(2):
        recorded = json.loads((tmp_path / f"calls{rank}.json").read_text())
        outside = {call["caller"] for call in recorded} - {collectives.__file__}
        assert not outside, f"collectives issued outside rvc_ray/train/collectives.py: {outside}"
        names = {call["name"] for call in recorded}
        assert {"all_reduce", "broadcast", "barrier"} <= names, names
        # auto batch (MIN), per-step health flags (MAX), logged step metrics, epoch metrics, validation (SUM)
        assert sum(call["name"] == "all_reduce" for call in recorded) >= 5
        devices = {call["device"] for call in recorded if call["device"] is not None}
        assert devices == {"cpu"}, devices
