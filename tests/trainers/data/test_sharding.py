"""The index arithmetic every loader shares: disjoint equal shards, (seed, epoch)-determined order."""

from __future__ import annotations

import pytest
import torch

from trainers.data.base import (
    check_steps,
    eval_shard,
    steps_per_epoch,
    train_eval_subset,
    train_shard,
)


def shard(rank: int, world: int = 2, *, n: int = 103, bs: int = 8, seed: int = 0,
          epoch: int = 0) -> torch.Tensor:
    return train_shard(n, batch_size=bs, rank=rank, world_size=world, seed=seed, epoch=epoch)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_train_shards_are_disjoint_full_batches_of_equal_length(world: int) -> None:
    shards = [shard(r, world) for r in range(world)]
    steps = steps_per_epoch(103, 8, world)
    assert steps == (103 // world) // 8
    assert all(len(s) == steps * 8 for s in shards)
    flat = torch.cat(shards)
    assert len(set(flat.tolist())) == len(flat)  # disjoint, no duplicates
    assert flat.min() >= 0 and flat.max() < 103


def test_order_is_a_function_of_seed_and_epoch() -> None:
    assert torch.equal(shard(0), shard(0))
    assert not torch.equal(shard(0, epoch=0), shard(0, epoch=1))
    assert not torch.equal(shard(0, seed=0), shard(0, seed=1))


def test_eval_shards_cover_the_set_once() -> None:
    parts = [eval_shard(11, rank=r, world_size=3) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(11))


def test_train_eval_subset_is_fixed_and_bounded() -> None:
    a, b = train_eval_subset(100, 30, seed=5), train_eval_subset(100, 30, seed=5)
    assert torch.equal(a, b) and len(a) == 30 and len(set(a.tolist())) == 30
    assert not torch.equal(a, train_eval_subset(100, 30, seed=6))
    assert len(train_eval_subset(10, 30, seed=0)) == 10


def test_bad_rank_and_too_little_data_raise() -> None:
    with pytest.raises(ValueError, match="rank 2 / world_size 2"):
        shard(2, 2)
    with pytest.raises(ValueError, match="lower training.batch_size"):
        check_steps(0, 10, 64, 1, "data.train_size")
