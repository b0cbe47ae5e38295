"""An out-of-memory error in a trial is recognised through Ray's wrappers and fails the run without retries."""

from __future__ import annotations

import pytest
import torch

from rvc_ray.tune.out_of_memory import FailFastOnOutOfMemory, TrialOutOfMemoryError, is_out_of_memory


def _cpu_allocation_failure() -> RuntimeError:
    try:
        torch.empty(2**47, dtype=torch.float32)  # 512 TiB: refused by the allocator, nothing is touched
    except RuntimeError as exc:
        return exc
    raise AssertionError("a 512 TiB allocation succeeded")


class _Wrapper(Exception):
    """Like Ray's task/actor error wrappers: the original error is its ``cause``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"The actor died because of an error raised in its creation task: {type(cause).__name__}")
        self.cause = cause


def test_out_of_memory_errors_are_recognised() -> None:
    cuda = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total)")
    assert is_out_of_memory(cuda)
    assert is_out_of_memory(_cpu_allocation_failure())
    assert is_out_of_memory(_Wrapper(cuda))
    chained = RuntimeError("step 3 failed")
    chained.__cause__ = torch.OutOfMemoryError("boom")  # the type alone says it
    assert is_out_of_memory(chained)
    assert is_out_of_memory("Task was killed due to the node running low on memory.")
    assert not is_out_of_memory(RuntimeError("loss/g/total is nan at step 3"))
    assert not is_out_of_memory(_Wrapper(ValueError("bad batch")))


def test_the_callback_fails_the_run_on_out_of_memory_only() -> None:
    callback = FailFastOnOutOfMemory()
    callback.after_exception(None, {0: RuntimeError("connection reset"), 1: RuntimeError("peer died")})  # retried
    with pytest.raises(TrialOutOfMemoryError, match=r"training rank 1 ran out of memory \(.*can't allocate memory"):
        callback.after_exception(None, {0: RuntimeError("collective aborted"), 1: _Wrapper(_cpu_allocation_failure())})
