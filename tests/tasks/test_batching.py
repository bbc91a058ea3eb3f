"""Batch plans (shuffling, bucketing, sharding, determinism) and the collate functions."""

import numpy as np
import pytest
import torch
from seqbackbone.tasks.batching import BatchPlan, bucket_length, pad_collate, split_indices, stack_collate


def flat(batches):
    return [i for b in batches for i in b]


def test_each_epoch_is_a_permutation_and_depends_only_on_seed_and_epoch():
    plan = BatchPlan(23, 5, shuffle=True, seed=3)
    e0, e1 = plan.batches(0), plan.batches(1)
    assert sorted(flat(e0)) == list(range(23)) and sorted(flat(e1)) == list(range(23))
    assert flat(e0) != flat(e1)
    assert BatchPlan(23, 5, shuffle=True, seed=3).batches(1) == e1
    assert len(plan) == len(e0) == 5


def test_drop_last_and_length():
    plan = BatchPlan(23, 5, shuffle=True, seed=0, drop_last=True)
    batches = plan.batches(0)
    assert len(batches) == len(plan) == 4 and all(len(b) == 5 for b in batches)


@pytest.mark.parametrize("world", [2, 3])
def test_shards_cover_the_epoch_with_equal_batch_counts(world):
    n, bs = 17, 4
    plans = [BatchPlan(n, bs, shuffle=True, seed=1, rank=r, world_size=world) for r in range(world)]
    shards = [flat(p.batches(2)) for p in plans]
    per_rank = -(-n // world)
    assert all(len(s) == per_rank for s in shards)
    assert len({len(p.batches(2)) for p in plans}) == 1 and len(plans[0]) == len(plans[0].batches(2))
    covered = [i for s in shards for i in s]
    assert set(covered) == set(range(n)) and len(covered) == per_rank * world  # padding repeats a few


def test_bucketing_groups_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 1000, 512).tolist()
    bucketed = BatchPlan(512, 16, shuffle=True, seed=0, lengths=lengths).batches(0)
    plain = BatchPlan(512, 16, shuffle=True, seed=0).batches(0)

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    assert sorted(flat(bucketed)) == list(range(512))
    assert padding(bucketed) < 0.2 * padding(plain)
    ordered = BatchPlan(512, 16, shuffle=False, lengths=lengths).batches(0)
    assert [lengths[i] for i in flat(ordered)] == sorted(lengths, reverse=True)


def test_pad_collate_masks_padding():
    items = [(torch.tensor([1.0, 2.0, 3.0]), 1), (torch.tensor([4.0]), 0)]
    batch = pad_collate(items)
    assert torch.equal(batch["x"], torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]]))
    assert torch.equal(batch["mask"], torch.tensor([[True, True, True], [True, False, False]]))
    assert torch.equal(batch["y"], torch.tensor([1, 0]))
    assert stack_collate([(torch.zeros(2, 2), 3)])["x"].shape == (1, 2, 2)


def test_split_indices():
    keep, held = split_indices(50, 0.1, seed=0)
    assert len(held) == 5 and sorted(keep + held) == list(range(50))
    assert split_indices(50, 0.1, seed=0) == (keep, held)
    assert split_indices(50, 0.0, seed=0) == (list(range(50)), [])
    with pytest.raises(ValueError, match="fraction"):
        split_indices(5, 1.0, seed=0)


def test_bucket_length_grid():
    rng = np.random.default_rng(0)
    for n in rng.integers(1, 50_000, 300).tolist() + [1, 2, 255, 256, 257, 1024, 1025]:
        for multiple in (1, 32, 256):
            b = bucket_length(int(n), multiple)
            assert b >= n and b % multiple == 0
            # at most a quarter of padding on top of the rounding to the multiple
            assert b <= -(-int(n * 1.25) // multiple) * multiple + multiple
    assert [bucket_length(n) for n in (1024, 1025, 1280, 1281, 1800, 2049)] == [1024, 1280, 1280, 1536, 2048, 2560]
    assert len({bucket_length(n, 256) for n in range(1000, 20_000)}) <= 20  # few shapes for whole recordings
    with pytest.raises(ValueError, match="n must be"):
        bucket_length(0)
    with pytest.raises(ValueError, match="multiple"):
        bucket_length(10, 0)


def test_pad_collate_to_bucket():
    items = [(torch.ones(300), 1), (torch.ones(70), 0)]
    batch = pad_collate(items, bucket=64)
    assert batch["x"].shape == (2, 320)  # 300 -> 320 (256 * 1.25)
    assert batch["mask"].sum(1).tolist() == [300, 70] and not batch["x"][~batch["mask"]].any()
    assert pad_collate(items)["x"].shape == (2, 300)
