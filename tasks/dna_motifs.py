"""dna-motifs: a built-in long-range task that needs no files.

Each example is a random DNA sequence of `seq_len` bases (default 1,024). The label is 1 when both motifs
(MOTIF_A and MOTIF_B, 8 bases each) occur at least `min_gap` bases apart (default: half the sequence), in either
order; it is 0 when neither or only one of them occurs. Negatives are mostly one-motif sequences (20% A only, 20% B
only, 10% none; 50% positives), so a model that finds one motif and ignores the other stays near 80% accuracy: the
label needs both, and they sit hundreds of bases apart. The random background is scrubbed of chance occurrences of
either motif, so labels are exact.

Training data are drawn fresh every epoch from (seed, epoch, index); validation and test sets are fixed by the seed
(streams of their own, never seen in training).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .base import ClassifyTask, TaskData, TaskInputError, register_task
from .batching import stack_collate

MOTIF_A = "CGTATGCA"
MOTIF_B = "GACTTGAC"
_CODES = {c: i for i, c in enumerate("ACGT")}
# Probabilities of (both, A only, B only, neither).
KIND_PROBS = (0.5, 0.2, 0.2, 0.1)


def _ids_of_bases() -> np.ndarray:
    from seqbackbone.tokenizer import DnaTokenizer

    return np.array([DnaTokenizer.vocab[c] for c in "ACGT"], dtype=np.int64)


def _find_all(hay: bytes, needle: bytes) -> list[int]:
    out, i = [], hay.find(needle)
    while i >= 0:
        out.append(i)
        i = hay.find(needle, i + 1)
    return out


def make_example(rng: np.random.Generator, seq_len: int, min_gap: int) -> tuple[np.ndarray, int]:
    """One sequence as base codes 0-3 (A C G T) (seq_len,) uint8, and its label."""
    m = len(MOTIF_A)
    if seq_len < min_gap + 2 * m:
        raise ValueError(f"seq_len {seq_len} is too short for two motifs {min_gap} bases apart")
    a = np.frombuffer(bytes(_CODES[c] for c in MOTIF_A), dtype=np.uint8)
    b = np.frombuffer(bytes(_CODES[c] for c in MOTIF_B), dtype=np.uint8)
    kind = int(rng.choice(4, p=KIND_PROBS))
    seq = rng.integers(0, 4, seq_len, dtype=np.uint8)
    placed: list[tuple[int, np.ndarray]] = []
    if kind == 0:
        first = int(rng.integers(0, seq_len - min_gap - 2 * m + 1))
        second = int(rng.integers(first + m + min_gap, seq_len - m + 1))
        order = (a, b) if rng.random() < 0.5 else (b, a)
        placed = [(first, order[0]), (second, order[1])]
    elif kind in (1, 2):
        placed = [(int(rng.integers(0, seq_len - m + 1)), a if kind == 1 else b)]
    for pos, motif in placed:
        seq[pos : pos + m] = motif
    keep = {pos for pos, _ in placed}
    # Scrub chance occurrences outside the placed ones: change one base inside them until none is left.
    for _ in range(100):
        hay = seq.tobytes()
        stray = [i for mot in (a, b) for i in _find_all(hay, mot.tobytes()) if i not in keep]
        if not stray:
            break
        for i in stray:
            j = i + int(rng.integers(0, m))
            if not any(p <= j < p + m for p in keep):
                seq[j] = (seq[j] + 1 + int(rng.integers(0, 3))) % 4
    return seq, int(kind == 0)


class MotifDataset(Dataset):
    """`n` examples; item i of epoch e is drawn from seed (seed, stream, e, i), so any worker or a resumed run
    draws the same item. Items are (ids (seq_len,) long, label)."""

    def __init__(self, n: int, seq_len: int, min_gap: int, seed: int, stream: int, fresh_each_epoch: bool) -> None:
        self.n, self.seq_len, self.min_gap = n, seq_len, min_gap
        self.seed, self.stream, self.fresh = seed, stream, fresh_each_epoch
        self.epoch = 0
        self.base_ids = _ids_of_bases()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch if self.fresh else 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rng = np.random.default_rng([self.seed, self.stream, self.epoch, i])
        seq, label = make_example(rng, self.seq_len, self.min_gap)
        return torch.from_numpy(self.base_ids[seq]), label


@register_task
class DnaMotifs(ClassifyTask):
    name = "dna-motifs"
    description = "built-in: do two DNA motifs both occur, far apart, in a random sequence of 1,024 bases?"
    needs_data = False
    defaults: dict[str, Any] = {
        "model": "mamba_dna_cls_tiny",
        "model_kwargs": {},
        "seq_len": 1024,
        "min_gap": None,  # default seq_len // 2
        "n_train": 2048,  # fresh examples per epoch
        "n_val": 512,
        "n_test": 1000,
        "epochs": 6,
        "batch_size": 32,
        "lr": 3e-3,
        "weight_decay": 0.01,
        "warmup_frac": 0.05,
        "data_seed": 1234,  # fixes the test set whatever --seed is
    }

    def load_data(self, cfg: dict[str, Any]) -> TaskData:
        seq_len = int(cfg["seq_len"])
        min_gap = int(cfg["min_gap"] or seq_len // 2)
        if seq_len < min_gap + 16:
            raise TaskInputError(f"seq_len {seq_len} is too short for motifs {min_gap} bases apart")
        ds = int(cfg["data_seed"])
        train = MotifDataset(int(cfg["n_train"]), seq_len, min_gap, ds + int(cfg["seed"]), 0, True)
        val = MotifDataset(int(cfg["n_val"]), seq_len, min_gap, ds, 1, False)
        test = MotifDataset(int(cfg["n_test"]), seq_len, min_gap, ds, 2, False)
        info = {"labels": ["no", "yes"], "motifs": [MOTIF_A, MOTIF_B], "seq_len": seq_len, "min_gap": min_gap}
        return TaskData(train, val, test, stack_collate, info=info)
