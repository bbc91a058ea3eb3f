"""dna-classify's training augmentations: jittered ends and random base substitutions, reproducible per epoch."""

from __future__ import annotations

import pytest
import torch
from seqbackbone.tasks.base import TaskInputError
from seqbackbone.tasks.batching import ListDataset
from seqbackbone.tasks.dna_classify import BASE_IDS, JitteredDna, augment_settings


def _data(n: int = 50, length: int = 40) -> ListDataset:
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(4, 9, (length,), generator=g) for _ in range(n)]  # A C G T N
    return ListDataset(seqs, [i % 2 for i in range(n)])


def _is_window(crop: torch.Tensor, full: torch.Tensor, shift: int) -> bool:
    for left in range(shift + 1):
        right = len(full) - left - len(crop)
        if 0 <= right <= shift and torch.equal(full[left : left + len(crop)], crop):
            return True
    return False


def test_shift_crops_a_window_within_the_limit():
    base = _data()
    ds = JitteredDna(base, shift=5, mutate=0.0, seed=1)
    lengths = set()
    for i in range(len(ds)):
        crop, label = ds[i]
        assert label == base[i][1]
        assert _is_window(crop, base[i][0], 5)
        lengths.add(len(crop))
    assert min(lengths) >= 40 - 10 and len(lengths) > 3  # the crops really vary


def test_draws_repeat_per_epoch_and_change_across_epochs():
    ds = JitteredDna(_data(), shift=4, mutate=0.1, seed=3)
    ds.set_epoch(2)
    first = [ds[i][0] for i in range(len(ds))]
    again = [ds[i][0] for i in range(len(ds))]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    ds.set_epoch(3)
    other = [ds[i][0] for i in range(len(ds))]
    assert any(len(a) != len(b) or not torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_mutations_use_bases_only_at_the_asked_rate():
    base = ListDataset([torch.full((2000,), 8)], [0])  # all N: every substitution shows
    ds = JitteredDna(base, shift=0, mutate=0.2, seed=0)
    ids, _ = ds[0]
    changed = ids != 8
    assert set(ids[changed].tolist()) <= set(BASE_IDS)
    assert 0.17 < changed.float().mean().item() < 0.23


@pytest.mark.parametrize("cfg", [{"shift_augment": -1}, {"shift_augment": 2.5}, {"mutate_augment": 1.0},
                                 {"mutate_augment": "x"}])
def test_bad_settings_are_named(cfg):
    with pytest.raises(TaskInputError, match=next(iter(cfg))):
        augment_settings(cfg)
