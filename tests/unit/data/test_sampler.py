"""The length-bucketed distributed sampler: exact per-worker split, disjoint ranks, padding, epochs."""

from __future__ import annotations

import random

import pytest

from rvc_ray.config import ConfigError, load_run_config
from rvc_ray.data.sampler import DistributedBucketSampler, assign_buckets

BOUNDARIES = (100, 200, 300, 400)


def _lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(20, 450) for _ in range(n)]


def _samplers(lengths: list[int], global_batch: int, world: int, **kwargs: object) -> list[DistributedBucketSampler]:
    return [
        DistributedBucketSampler(
            lengths, global_batch_size=global_batch, boundaries=BOUNDARIES, num_replicas=world, rank=r, seed=7, **kwargs
        )
        for r in range(world)
    ]


def test_assign_buckets_keeps_short_and_long_items() -> None:
    assignment = assign_buckets([10, 100, 101, 250, 999], BOUNDARIES)
    assert assignment.buckets == [[0, 1], [2], [3], [4]]
    assert assignment.dropped == []


def test_assign_buckets_reports_items_below_min_length() -> None:
    assignment = assign_buckets([10, 50, 150], BOUNDARIES, min_length=32)
    assert assignment.dropped == [0]
    assert sorted(i for b in assignment.buckets for i in b) == [1, 2]


def test_every_rank_gets_exactly_per_worker_batch_and_same_step_count() -> None:
    samplers = _samplers(_lengths(53), global_batch=8, world=2)
    per_rank = [list(s) for s in samplers]
    assert len(per_rank[0]) == len(per_rank[1]) == len(samplers[0])
    assert all(len(batch) == 4 for rank in per_rank for batch in rank)


def test_ranks_are_disjoint_when_buckets_need_no_padding() -> None:
    lengths = [150] * 16 + [350] * 8
    samplers = _samplers(lengths, global_batch=8, world=2)
    seen = [{i for batch in s for i in batch} for s in samplers]
    assert seen[0].isdisjoint(seen[1])
    assert seen[0] | seen[1] == set(range(len(lengths)))


def test_union_of_ranks_covers_every_item_with_padding() -> None:
    lengths = _lengths(37)
    samplers = _samplers(lengths, global_batch=6, world=3)
    covered = {i for s in samplers for batch in s for i in batch}
    assert covered == set(range(len(lengths)))


def test_global_batches_do_not_depend_on_the_number_of_workers() -> None:
    lengths = _lengths(41)
    one = _samplers(lengths, global_batch=4, world=1)[0]
    two = _samplers(lengths, global_batch=4, world=2)
    for epoch in (0, 3):
        one.set_epoch(epoch)
        for s in two:
            s.set_epoch(epoch)
        combined = [a + b for a, b in zip(*(list(s) for s in two), strict=True)]
        assert combined == list(one)


def test_no_batch_mixes_buckets() -> None:
    lengths = _lengths(60)
    sampler = _samplers(lengths, global_batch=4, world=1)[0]
    bucket_of = {i: b for b, bucket in enumerate(sampler.buckets) for i in bucket}
    for batch in sampler:
        assert len({bucket_of[i] for i in batch}) == 1


def test_set_epoch_changes_order_deterministically() -> None:
    lengths = _lengths(40)
    a, b = _samplers(lengths, 4, 1)[0], _samplers(lengths, 4, 1)[0]
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b)
    b.set_epoch(2)
    assert list(a) != list(b)


def test_uneven_global_batch_is_rejected_by_sampler() -> None:
    with pytest.raises(ValueError, match="does not divide across 2 workers"):
        DistributedBucketSampler([120] * 8, global_batch_size=5, boundaries=BOUNDARIES, num_replicas=2, rank=0)


def test_uneven_global_batch_is_rejected_by_config_before_workers_start() -> None:
    with pytest.raises(ConfigError, match=r"train.batch_size=5 \(the global batch\) does not divide"):
        load_run_config("tiny_cpu", ["train.batch_size=5", "scaling.num_workers=2"])
