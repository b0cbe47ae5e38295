"""Out-of-memory recognition and the train.batch_size=auto search, with an injected memory limit on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rvc_ray.config import RunConfig, load_run_config
from rvc_ray.data.dataset import TrainingItems, load_feature_table, write_synthetic_feature_table
from rvc_ray.train.memory import (
    TrainingOutOfMemoryError,
    find_largest_batch,
    is_out_of_memory,
    make_probe_step,
    resolve_auto_batch_size,
)
from rvc_ray.train.steps import NonFiniteLossError, StepSettings


@pytest.mark.parametrize(("fits_up_to", "limit"), [(1, 64), (5, 64), (13, 16), (16, 16), (64, 64), (40, 33), (7, 7)])
def test_search_finds_the_largest_fitting_batch_in_few_probes(fits_up_to: int, limit: int) -> None:
    probed: list[int] = []

    def fits(batch: int) -> bool:
        probed.append(batch)
        return batch <= fits_up_to

    assert find_largest_batch(fits, limit=limit) == min(fits_up_to, limit)
    assert len(probed) <= 2 * limit.bit_length() and len(set(probed)) == len(probed)


def test_search_returns_zero_when_nothing_fits_and_rejects_a_bad_limit() -> None:
    assert find_largest_batch(lambda b: False, limit=8) == 0
    with pytest.raises(ValueError, match="limit"):
        find_largest_batch(lambda b: True, limit=0)


def test_out_of_memory_is_recognised_through_wrappers() -> None:
    from ray.train import TrainingFailedError
    from ray.train.v2.api.exceptions import WorkerGroupError

    cuda = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried")
    assert is_out_of_memory(cuda) and is_out_of_memory(cpu) and is_out_of_memory(TrainingOutOfMemoryError("x"))
    try:
        try:
            raise cuda
        except torch.OutOfMemoryError as exc:
            raise TrainingOutOfMemoryError("rank 0: out of memory") from exc
    except TrainingOutOfMemoryError as chained:
        assert is_out_of_memory(RuntimeError("worker died")) is False
        assert is_out_of_memory(WorkerGroupError("training failed", {1: chained}))
    assert is_out_of_memory(TrainingFailedError("TrainingOutOfMemoryError: rank 1 ..."))
    assert not is_out_of_memory(WorkerGroupError("training failed", {0: NonFiniteLossError("nan")}))
    assert not is_out_of_memory(ValueError("out of range"))


@pytest.fixture
def probe_setup(tmp_path: Path) -> tuple[RunConfig, TrainingItems, StepSettings]:
    cfg = load_run_config("tiny_cpu", ["scaling.num_workers=1"])
    write_synthetic_feature_table(
        tmp_path, content_dim=cfg.model.content_dim, sample_rate=cfg.audio.sample_rate, frames=[24, 40, 30]
    )
    table = load_feature_table(tmp_path, "train", hop_length=cfg.audio.hop_length)
    items = TrainingItems(table, cfg.audio, max_frames=cfg.data.max_frames)
    return cfg, items, StepSettings.from_config(cfg)


def test_auto_batch_with_real_steps_and_an_injected_memory_limit(probe_setup) -> None:
    """The search runs real training steps on the longest clips; above 3 clips the 'device' is full."""
    cfg, items, settings = probe_setup
    real_step = make_probe_step(cfg, items, settings, min_frames=4)
    ran: list[int] = []

    def step_with_limit(batch: int) -> None:
        if batch > 3:
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected: {batch} clips > 3)")
        real_step(batch)
        ran.append(batch)

    reduced: list[float] = []

    def min_over_two_workers(value: float, device: object) -> float:
        reduced.append(value)
        return min(value, 2.0)  # the other worker's GPU holds 2 per worker

    found = resolve_auto_batch_size(
        step_with_limit, device="cpu", world_size=2, global_limit=64, min_across_workers=min_over_two_workers
    )
    assert ran == [1, 2, 3]  # doubling to 4 (out of memory), then bisecting between 2 (fit) and 4
    assert reduced == [3.0] and found == 4  # 2 per worker on the smaller GPU x 2 workers


def test_auto_batch_refuses_when_one_clip_does_not_fit_and_passes_other_errors_through(probe_setup) -> None:
    def never(batch: int) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(TrainingOutOfMemoryError, match="not even one clip"):
        resolve_auto_batch_size(never, device="cpu", world_size=1, global_limit=8, min_across_workers=lambda v, d: v)

    def broken(batch: int) -> None:
        raise NonFiniteLossError("non-finite generator loss")

    with pytest.raises(NonFiniteLossError):
        resolve_auto_batch_size(broken, device="cpu", world_size=1, global_limit=8, min_across_workers=lambda v, d: v)


def test_an_out_of_memory_step_in_the_loop_is_a_health_error(probe_setup) -> None:
    """The loop turns an allocator failure inside the step into TrainingOutOfMemoryError (never replayed by
    Ray Train's restarts; Tune fails the trial at once)."""
    from rvc_ray.train.epoch import RunState, guarded_step
    from rvc_ray.train.gan_state import Adversary, GANState, GeneratorState

    cfg, items, settings = probe_setup

    class OutOfMemoryGenerator(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, *args: object) -> torch.Tensor:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    gen, disc = OutOfMemoryGenerator(), torch.nn.Linear(1, 1)
    opt_g, opt_d = torch.optim.AdamW(gen.parameters()), torch.optim.AdamW(disc.parameters())
    gan = GANState(GeneratorState(gen, opt_g, None), Adversary(disc, opt_d, None))
    run = RunState(0, torch.device("cpu"), 7, gan)
    with pytest.raises(TrainingOutOfMemoryError, match=r"step 8 with 2 clips per worker") as caught:
        guarded_step(run, items.batch([0, 1]), settings)
    assert is_out_of_memory(caught.value) and isinstance(caught.value.__cause__, torch.OutOfMemoryError)


def test_an_auto_run_resumes_with_the_batch_its_checkpoint_recorded(tmp_path: Path, probe_setup) -> None:
    """Resumed (or restarted by Ray Train), an auto run keeps its first batch: same data order and steps."""
    import json

    import ray.train

    from rvc_ray.train.memory import resolve_run_batch_size

    _, items, settings = probe_setup
    cfg = load_run_config("tiny_cpu", ["train.batch_size=auto", "scaling.num_workers=2"])
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "meta.json").write_text(json.dumps({"global_batch_size": 6, "num_workers": 2}))
    checkpoint = ray.train.Checkpoint.from_directory(str(tmp_path / "ckpt"))
    resolved, source = resolve_run_batch_size(cfg, items, settings, 2, checkpoint, min_frames=4)
    assert (resolved.train.batch_size, source) == (6, "checkpoint")
    assert resolve_run_batch_size(resolved, items, settings, 2, None, min_frames=4) == (resolved, "config")
