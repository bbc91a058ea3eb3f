"""Batching shared by the tasks: the per-epoch batch plan (shuffled, length-bucketed, sharded across processes)
and collate functions that pad variable-length sequences and return their masks.

The plan is a pure function of (seed, epoch, rank), so a run resumed at batch k of an epoch sees exactly the batches
an uninterrupted run would have seen. Sharding follows torch's DistributedSampler: the epoch's permutation is padded
to a multiple of the world size and rank r takes every world_size-th index from r.

Variable-length inputs (recordings) can be padded up to a few bucket lengths (`bucket_length`): every new (B, L)
shape costs a kernel compilation or an FFT plan on a GPU, and whole recordings otherwise give hundreds of lengths.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


class BatchPlan:
    """Index batches for one epoch.

    n: dataset size; lengths: per-item lengths (bucketing sorts each pool of `bucket_batches` batches by length so
    a batch holds items of similar length and little padding); shuffle: new order each epoch, else sequential (or
    sorted by length when `lengths` is given, for evaluation). Every rank gets the same number of batches.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        lengths: Sequence[int] | None = None,
        bucket_batches: int = 32,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if n <= 0:
            raise ValueError(f"BatchPlan needs a non-empty dataset, got n={n}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if lengths is not None and len(lengths) != n:
            raise ValueError(f"lengths has {len(lengths)} entries for a dataset of {n}")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.bucket_batches, self.drop_last = bucket_batches, drop_last
        self.rank, self.world_size = rank, world_size

    def _indices(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        if self.shuffle:
            idx = rng.permutation(self.n)
        elif self.lengths is not None:
            idx = np.argsort(-self.lengths, kind="stable")
        else:
            idx = np.arange(self.n)
        if self.world_size > 1:  # pad to a multiple of the world size (DistributedSampler does the same)
            total = -(-self.n // self.world_size) * self.world_size
            idx = np.concatenate([idx, idx[: total - self.n]])[self.rank :: self.world_size]
        return idx

    def batches(self, epoch: int) -> list[list[int]]:
        """The batches of `epoch` for this rank, in the order they are trained on."""
        idx = self._indices(epoch)
        bs = self.batch_size
        if self.shuffle and self.lengths is not None:
            pool = bs * self.bucket_batches
            chunks = [idx[i : i + pool] for i in range(0, len(idx), pool)]
            idx = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
        out = [idx[i : i + bs].tolist() for i in range(0, len(idx), bs)]
        if self.drop_last and len(out) > 1 and len(out[-1]) < bs:
            out.pop()
        if self.shuffle and self.lengths is not None:  # buckets were built in order; mix them
            order = np.random.default_rng([self.seed, epoch, 1]).permutation(len(out))
            out = [out[i] for i in order]
        return out

    def __len__(self) -> int:
        per_rank = -(-self.n // self.world_size)
        full, rest = divmod(per_rank, self.batch_size)
        return full + (1 if rest and not (self.drop_last and full > 0) else 0)


class ListDataset(Dataset):
    """A dataset over parallel lists: item i is (inputs[i], labels[i])."""

    def __init__(self, inputs: Sequence, labels: Sequence) -> None:
        if len(inputs) != len(labels):
            raise ValueError(f"inputs ({len(inputs)}) and labels ({len(labels)}) differ in length")
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int):
        return self.inputs[i], self.labels[i]

    def lengths(self) -> list[int]:
        return [len(x) for x in self.inputs]


def bucket_length(n: int, multiple: int = 1, steps_per_octave: int = 4) -> int:
    """The smallest length >= n of the form 2^k * (1 + j / steps_per_octave), j < steps_per_octave, rounded up to a
    multiple of `multiple` (with 4 steps: 1024, 1280, 1536, 1792, 2048, 2560, ...): at most 1 / steps_per_octave
    of padding added, and only steps_per_octave distinct lengths per doubling."""
    if n < 1:
        raise ValueError(f"n must be a positive length, got {n}")
    if multiple < 1 or steps_per_octave < 1:
        raise ValueError(f"multiple and steps_per_octave must be positive, got {multiple} and {steps_per_octave}")
    base = 1 << (int(n).bit_length() - 1)  # 2^k <= n < 2^(k+1)
    for j in range(steps_per_octave + 1):
        size = -(-base * (steps_per_octave + j) // steps_per_octave)
        if size >= n:
            return -(-size // multiple) * multiple
    raise AssertionError("unreachable: j = steps_per_octave gives 2^(k+1) > n")


def padded_length(n: int, bucket: int | None) -> int:
    """n itself when `bucket` is None or 0, else bucket_length(n, multiple=bucket)."""
    return bucket_length(n, int(bucket)) if bucket else n


def pad_collate(items: list[tuple[torch.Tensor, int]], pad_value: float = 0, bucket: int | None = None
                ) -> dict[str, torch.Tensor]:
    """Pad 1-D sequences to the longest in the batch: {"x": (B, L_max), "mask": bool (B, L_max), "y": (B,)}.
    With `bucket` (a length multiple), L_max is rounded up to bucket_length(longest, bucket)."""
    seqs = [torch.as_tensor(x) for x, _ in items]
    length = padded_length(max(int(s.shape[0]) for s in seqs), bucket)
    x = seqs[0].new_full((len(seqs), length, *seqs[0].shape[1:]), pad_value)
    mask = torch.zeros(len(seqs), length, dtype=torch.bool)
    for i, s in enumerate(seqs):
        x[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = True
    y = torch.tensor([int(label) for _, label in items], dtype=torch.long)
    return {"x": x, "mask": mask, "y": y}


def stack_collate(items: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    """Stack equal-shape inputs: {"x": (B, ...), "y": (B,)}."""
    x = torch.stack([torch.as_tensor(x) for x, _ in items])
    y = torch.tensor([int(label) for _, label in items], dtype=torch.long)
    return {"x": x, "y": y}


def split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded split of range(n): (kept, held_out) with round(fraction * n) held out (at least one when fraction
    is positive and n > 1)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    k = int(round(fraction * n))
    if fraction > 0 and n > 1:
        k = max(k, 1)
    perm = np.random.default_rng([seed, 7]).permutation(n)
    return sorted(perm[k:].tolist()), sorted(perm[:k].tolist())
