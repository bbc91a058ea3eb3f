"""dna-motifs: a built-in long-range task that needs no files.

Each example is a random DNA sequence of `seq_len` bases (default 1,024). The label is 1 when both motifs
(MOTIF_A and MOTIF_B, 8 bases each) occur at least `min_gap` bases apart (default: half the sequence), in either
order; it is 0 when neither or only one of them occurs. Negatives are mostly one-motif sequences (20% A only, 20% B
only, 10% none; 50% positives), so a model that finds one motif and ignores the other stays near 80% accuracy: the
label needs both, and they sit hundreds of bases apart. The random background is scrubbed of chance occurrences of
either motif, so labels are exact.

Training data are drawn fresh every epoch from (seed, epoch, index); validation and test sets are fixed by the seed
(streams of their own, never seen in training) and always full length.

Defaults are sized for a 2-core CPU (a few minutes): a 2-layer bidirectional model of width 32 with max pooling over
positions (a motif is one position out of a thousand; mean pooling dilutes its signal 1,000-fold and learns far more
slowly), and a sequence-length warm-up (as in HyenaDNA): the first `short_epochs` train on `short_len`-base
sequences (motifs `short_len / 2` apart), the rest on full-length ones.
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

    def __init__(
        self, n: int, seq_len: int, min_gap: int, seed: int, stream: int, fresh_each_epoch: bool,
        short_len: int | None = None, short_epochs: int = 0,
    ) -> None:
        self.n, self.full = n, (seq_len, min_gap)
        self.seq_len, self.min_gap = seq_len, min_gap
        self.short_len, self.short_epochs = short_len, short_epochs
        self.seed, self.stream, self.fresh = seed, stream, fresh_each_epoch
        self.epoch = 0
        self.base_ids = _ids_of_bases()
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch if self.fresh else 0
        if self.short_len and self.epoch < self.short_epochs:  # sequence-length warm-up
            self.seq_len, self.min_gap = self.short_len, self.short_len // 2
        else:
            self.seq_len, self.min_gap = self.full

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
        "model_kwargs": {"d_model": 32, "n_layer": 2, "d_state": 4, "expand": 1, "pooling": "max"},
        "seq_len": 1024,
        "min_gap": None,  # default seq_len // 2
        "short_len": 128,  # sequence-length warm-up: the first short_epochs train on sequences this long
        "short_epochs": 3,
        "n_train": 800,  # fresh examples per epoch
        "n_val": 200,
        "n_test": 1000,
        "epochs": 4,
        "eval_every": 50,
        "batch_size": 16,
        "eval_batch_size": 100,
        "lr": 1e-2,
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
        short = cfg.get("short_len")
        if short is not None and int(short) < 24:
            raise TaskInputError(f"short_len must be at least 24 (two motifs and a gap), got {short}")
        train = MotifDataset(int(cfg["n_train"]), seq_len, min_gap, ds + int(cfg["seed"]), 0, True,
                             short_len=int(short) if short else None, short_epochs=int(cfg.get("short_epochs", 0)))
        val = MotifDataset(int(cfg["n_val"]), seq_len, min_gap, ds, 1, False)
        test = MotifDataset(int(cfg["n_test"]), seq_len, min_gap, ds, 2, False)
        info = {"labels": ["no", "yes"], "motifs": [MOTIF_A, MOTIF_B], "seq_len": seq_len, "min_gap": min_gap}
        return TaskData(train, val, test, stack_collate, info=info)
