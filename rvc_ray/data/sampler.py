"""Length-bucketed distributed batch sampler with ONE global batch size.

RVC's ``DistributedBucketSampler`` (docs/rvc-reference.md §6.2) groups clips of similar length into buckets, pads
each bucket by repeating its own indices and deals the indices round-robin to the ranks. RVC-WebUI
then passes ``batch_size * n_gpus`` as the per-rank batch, so the real global batch is
``bs * n_gpus**2`` (docs/rvc-reference.md §6.3). Here the user sets one *global* batch and every worker gets
exactly ``global / num_workers`` items per step.

One more property, on purpose: the sequence of *global* batches depends only on the lengths, the
global batch size, the seed and the epoch, never on the number of workers. Each global batch is cut
into ``num_replicas`` contiguous slices and rank ``r`` takes slice ``r``. So a step on 2 workers x B/2
sees exactly the items of the same step on 1 worker x B (the gradient-equivalence test relies on it),
and changing the worker count does not change what the model is trained on.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator, Sequence

from rvc_ray.config import split_global_batch

__all__ = ["BucketAssignment", "DistributedBucketSampler", "assign_buckets"]


class BucketAssignment:
    """Which item goes to which length bucket, and which items were left out (and why).

    Attributes:
        buckets: one list of item indices per non-empty bucket, in bucket order.
        dropped: indices of items shorter than ``min_length`` (never silently: callers log them).
    """

    def __init__(self, buckets: list[list[int]], dropped: list[int]) -> None:
        self.buckets = buckets
        self.dropped = dropped


def assign_buckets(
    lengths: Sequence[int], boundaries: Sequence[int], min_length: int | None = None
) -> BucketAssignment:
    """Put every item in a length bucket.

    Bucket ``b`` holds lengths in ``(boundaries[b-1], boundaries[b]]``; the first bucket also holds
    everything at or below ``boundaries[0]`` and the last everything above ``boundaries[-1]``
    (unlike RVC, which silently drops clips of 100 frames or less). Items shorter than ``min_length``
    are returned in ``dropped``.

    Args:
        lengths: frames per item (after truncation to ``data.max_frames``).
        boundaries: strictly increasing bucket upper edges (``data.bucket_boundaries``).
        min_length: optional minimum number of frames; ``None`` keeps every item.
    """
    if not boundaries:
        raise ValueError("bucket boundaries must not be empty")
    if list(boundaries) != sorted(set(boundaries)):
        raise ValueError(f"bucket boundaries must be strictly increasing, got {list(boundaries)}")
    per_bucket: list[list[int]] = [[] for _ in boundaries]
    dropped: list[int] = []
    for index, length in enumerate(lengths):
        if min_length is not None and length < min_length:
            dropped.append(index)
            continue
        bucket = min(bisect.bisect_left(boundaries, length), len(boundaries) - 1)
        per_bucket[bucket].append(index)
    return BucketAssignment([b for b in per_bucket if b], dropped)


class DistributedBucketSampler:
    """A batch sampler: yields this rank's list of item indices for each step of an epoch.

    Every rank gets the same number of batches (each bucket is padded to a multiple of the global
    batch by repeating its own shuffled indices, as RVC does), so no rank waits at a collective for a
    step that another rank never takes. Within one epoch the ranks' items are disjoint except for
    those padding repeats. Call :meth:`set_epoch` on every rank before each epoch.

    Args:
        lengths: frames per item.
        global_batch_size: ``train.batch_size``; must divide by ``num_replicas``.
        boundaries: ``data.bucket_boundaries``.
        num_replicas: world size (``ray.train.get_context().get_world_size()``).
        rank: world rank (``get_world_rank()``).
        shuffle: shuffle inside buckets and the batch order (seeded by ``seed`` and the epoch).
        seed: the experiment seed; all ranks must pass the same one.
        min_length: items shorter than this are left out (see :attr:`dropped`).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        *,
        global_batch_size: int,
        boundaries: Sequence[int],
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        min_length: int | None = None,
    ) -> None:
        per_replica = split_global_batch(global_batch_size, num_replicas)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        assignment = assign_buckets(lengths, boundaries, min_length)
        if not assignment.buckets:
            raise ValueError(
                f"no training item is long enough: {len(lengths)} item(s), all shorter than min_length={min_length}"
            )
        self.buckets = assignment.buckets
        self.dropped = assignment.dropped
        self.global_batch_size = global_batch_size
        self.per_replica_batch_size = per_replica
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (identical on every rank)."""
        self.epoch = epoch

    def global_batches(self) -> list[list[int]]:
        """Every global batch of the current epoch, in step order (the same on every rank)."""
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        batches: list[list[int]] = []
        for bucket in self.buckets:
            ids = list(bucket)
            if self.shuffle:
                rng.shuffle(ids)
            remainder = (-len(ids)) % self.global_batch_size
            padded = ids + (ids * (remainder // len(ids) + 1))[:remainder]
            batches.extend(
                padded[start : start + self.global_batch_size]
                for start in range(0, len(padded), self.global_batch_size)
            )
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        start = self.rank * self.per_replica_batch_size
        for batch in self.global_batches():
            yield batch[start : start + self.per_replica_batch_size]

    def __len__(self) -> int:
        return sum(-(-len(bucket) // self.global_batch_size) for bucket in self.buckets)
