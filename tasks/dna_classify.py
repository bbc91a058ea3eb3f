"""dna-classify: labelled DNA sequences from a folder holding train.csv and test.csv (columns seq,label).

Labels may be any strings (e.g. EI / IE / N); they are mapped to ids in sorted order (numerically when all are
integers) and the mapping is stored in the run's config.json. Training flips each sequence to its reverse complement
with probability 1/2; evaluation averages the logits of a sequence and of its reverse complement ("conjoin").
Strand-specific data (sequences read on their gene's strand) should turn both off (`--set rc_augment=false --set
rc_conjoin=false`). Where the signal sits at a fixed offset in equal-length windows (splice sites at the centre),
learned position embeddings help a great deal: `--set 'model_kwargs={"encoder_kwargs": {"max_len": 64}}'` (max_len at
least the longest sequence; see scripts/real_data.sh for measured recipes).

Small data sets overfit within a few epochs; two training-only augmentations help there: `shift_augment=k` drops
0..k bases from each end of a training sequence (a window jittered by a few bases is still the same example), and
`mutate_augment=p` replaces each base with a random one with probability p. Both are drawn from (seed, epoch, item),
so a resumed run sees the same sequences.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from seqbackbone.data import read_seq_csv

from .base import ClassifyTask, TaskData, TaskInputError, register_task
from .batching import ListDataset, pad_collate, split_indices


def label_order(labels: list[str]) -> list[str]:
    """Distinct labels, sorted numerically when all are integers, else alphabetically."""
    distinct = set(labels)
    try:
        return sorted(distinct, key=int)
    except ValueError:
        return sorted(distinct)


def encode_labels(labels: list[str], names: list[str], where: str) -> list[int]:
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise TaskInputError(f"{where} has labels {unknown} that the training data does not have ({names})")
    return [index[x] for x in labels]


def tokenize(seqs: list[str]) -> list[torch.Tensor]:
    from seqbackbone.tokenizer import DnaTokenizer

    tok = DnaTokenizer()
    return [tok.encode(s) for s in seqs]


def read_split(folder: Path, name: str) -> tuple[list[str], list[str]]:
    path = folder / name
    if not path.is_file():
        raise TaskInputError(f"{folder} has no {name} (dna-classify expects train.csv and test.csv, columns seq,label)")
    try:
        table = read_seq_csv(path)
    except ValueError as err:
        raise TaskInputError(str(err)) from None
    return table.seqs, table.labels


BASE_IDS = (4, 5, 6, 7)  # A C G T in DnaTokenizer


class JitteredDna(Dataset):
    """Training items with fresh augmentation each epoch: item i of epoch e is sequence i with a random 0..shift bases
    dropped from each end (at least one base kept) and each base replaced by a random A/C/G/T with probability
    `mutate`, both drawn from (seed, e, i). Returns (ids (<= L,) long, label)."""

    def __init__(self, base: ListDataset, shift: int, mutate: float, seed: int) -> None:
        self.base, self.shift, self.mutate, self.seed, self.epoch = base, shift, mutate, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        ids, label = self.base[i]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        n = len(ids)
        if self.shift and n > 1:
            left = int(rng.integers(0, min(self.shift, n - 1) + 1))
            right = int(rng.integers(0, min(self.shift, n - 1 - left) + 1))
            ids = ids[left : n - right]
        if self.mutate:
            hit = torch.from_numpy(rng.random(len(ids)) < self.mutate)
            new = torch.from_numpy(rng.choice(BASE_IDS, size=len(ids))).to(ids.dtype)
            ids = torch.where(hit, new, ids)
        return ids, label

    def lengths(self) -> list[int]:
        return self.base.lengths()


def augment_settings(cfg: dict[str, Any]) -> tuple[int, float]:
    """(shift_augment, mutate_augment) from the run's settings, checked."""
    shift, mutate = cfg.get("shift_augment", 0), cfg.get("mutate_augment", 0.0)
    if isinstance(shift, bool) or not isinstance(shift, int) or shift < 0:
        raise TaskInputError(f"shift_augment must be a non-negative number of bases, got {shift!r}")
    if isinstance(mutate, bool) or not isinstance(mutate, (int, float)) or not 0.0 <= mutate < 1.0:
        raise TaskInputError(f"mutate_augment must be a probability in [0, 1), got {mutate!r}")
    return shift, float(mutate)


@register_task
class DnaClassify(ClassifyTask):
    name = "dna-classify"
    description = "DNA sequence classification from train.csv / test.csv (seq,label), RC augmentation and conjoin"
    defaults: dict[str, Any] = {
        "model": "mamba_dna_cls_tiny",
        "model_kwargs": {"drop_rate": 0.3},  # small data sets: the small model and no dropout overfit within epochs
        "epochs": 30,
        "batch_size": 64,
        "lr": 1e-3,
        "weight_decay": 0.1,
        "rc_augment": True,
        "rc_conjoin": True,
        "shift_augment": 0,
        "mutate_augment": 0.0,
    }

    def load_data(self, cfg: dict[str, Any]) -> TaskData:
        folder = Path(cfg["data"])
        if not folder.is_dir():
            raise TaskInputError(f"data folder {folder} does not exist")
        test_seqs, test_labels = read_split(folder, "test.csv")
        names = (cfg.get("task_info") or {}).get("labels")
        if cfg.get("evaluation_only") and names:
            train_seqs, train_labels = [], []
        else:
            train_seqs, train_labels = read_split(folder, "train.csv")
            names = names or label_order(train_labels)
        if len(names) < 2:
            raise TaskInputError(f"{folder / 'train.csv'} has a single label {names}; need at least two classes")
        train_y = encode_labels(train_labels, names, str(folder / "train.csv"))
        test_y = encode_labels(test_labels, names, str(folder / "test.csv"))
        train_x = tokenize(train_seqs)
        keep, held = split_indices(len(train_x), float(cfg.get("val_fraction", 0.1)), int(cfg.get("seed", 0)))
        shift, mutate = augment_settings(cfg)
        train = ListDataset([train_x[i] for i in keep], [train_y[i] for i in keep])
        if shift or mutate:
            train = JitteredDna(train, shift, mutate, int(cfg.get("seed", 0)))
        val = ListDataset([train_x[i] for i in held], [train_y[i] for i in held]) if held else None
        test = ListDataset(tokenize(test_seqs), test_y)
        info = {"labels": names, "n_train": len(train), "n_val": len(held), "n_test": len(test)}
        return TaskData(train, val, test, pad_collate, train_lengths=train.lengths(),
                        eval_lengths=lambda ds: ds.lengths(), info=info)

    def model_overrides(self, cfg: dict[str, Any], data: TaskData) -> dict[str, Any]:
        # The model flips sequences itself in training (rc_aug) and averages both strands in eval (rc_conjoin);
        # the saved model keeps conjoining wherever it is used next.
        return {**super().model_overrides(cfg, data), "rc_aug": bool(cfg["rc_augment"]),
                "rc_conjoin": bool(cfg["rc_conjoin"])}
