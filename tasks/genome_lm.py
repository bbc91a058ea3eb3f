"""genome-lm: next-nucleotide prediction on a genome (FASTA or FASTA.gz), next to the best order-k Markov model.

Split of the file's bases (records joined): the first `train_fraction` (90%) is the training part and the rest the
test part; the last `val_fraction` (5%) of the training part is a validation slice. The model trains on random
windows of `seq_len` bases from the training part minus the slice (reverse-complemented with probability 1/2), picks
its best checkpoint on the slice, and is scored in bits per base on the test part.

Scoring, for the model and the Markov baseline alike: every test base once, predicted from the bases before it.
The model reads overlapping windows of `eval_len` bases with stride eval_len / 2 and scores only the second half of
each window (all of the first one), so every base is predicted from at least eval_len / 2 bases of context; the
first window starts eval_len / 2 bases before the test part, inside the training part, as context only.
Predictions are distributions over A C G T (the model's logits for those four tokens); positions whose target is not
A/C/G/T are not scored.

The Markov baseline (tasks/markov.py) picks its order k <= 8 and smoothing on the validation slice, counted on the
same training bases as the model; results.json reports both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from seqbackbone.data import read_fasta

from .base import EvalContext, Task, TaskData, TaskInputError, register_task
from .markov import select_markov, to_codes

LN2 = float(np.log(2.0))


class RandomWindows(Dataset):
    """`n` windows of `length` token ids from `ids`; the start of window i in epoch e comes from (seed, e, i)."""

    def __init__(self, ids: torch.Tensor, length: int, n: int, seed: int) -> None:
        if len(ids) <= length:
            raise ValueError(f"the training part ({len(ids)} bases) is not longer than seq_len {length}")
        self.ids, self.length, self.n, self.seed, self.epoch = ids, length, n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        start = int(np.random.default_rng([self.seed, self.epoch, i]).integers(0, len(self.ids) - self.length + 1))
        return self.ids[start : start + self.length], 0


class ScoredWindows(Dataset):
    """Overlapping windows over `ids` scoring positions >= `score_from`. Item: (window (length,), first scored
    index within the window); windows at the end are shorter."""

    def __init__(self, ids: torch.Tensor, score_from: int, length: int) -> None:
        if length < 2 or length % 2:
            raise ValueError(f"eval_len must be an even number >= 2, got {length}")
        self.ids, self.length, self.stride = ids, length, length // 2
        begin = max(score_from - self.stride, 0)
        # Window j covers [s_j, s_j + length) and scores [max(s_j + stride, score_from), s_j + length), except the
        # first, which scores from score_from (or from 1: position 0 has nothing before it).
        self.items: list[tuple[int, int]] = []
        s = begin
        first_scored = max(score_from, 1)
        while first_scored < len(ids):
            self.items.append((s, first_scored - s))
            s += self.stride
            first_scored = s + self.stride
        self.n_scored = len(ids) - max(score_from, 1)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        s, first = self.items[i]
        return self.ids[s : s + self.length], first


def window_collate(items: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    """{"x": (B, L) ids right-padded with N, "score_from": (B,), "length": (B,)}."""
    length = max(len(w) for w, _ in items)
    from seqbackbone.tokenizer import N_ID

    x = torch.full((len(items), length), N_ID, dtype=torch.long)
    for i, (w, _) in enumerate(items):
        x[i, : len(w)] = w
    return {
        "x": x,
        "score_from": torch.tensor([f for _, f in items], dtype=torch.long),
        "length": torch.tensor([len(w) for w, _ in items], dtype=torch.long),
    }


def base_token_ids() -> list[int]:
    from seqbackbone.tokenizer import DnaTokenizer

    return [DnaTokenizer.vocab[c] for c in "ACGT"]


@register_task
class GenomeLM(Task):
    name = "genome-lm"
    description = "next-nucleotide prediction on a FASTA genome (bits per base), with an order-k Markov baseline"
    metric = "bits_per_base"
    greater_is_better = False
    defaults: dict[str, Any] = {
        "model": "mamba_dna_lm_small",
        "model_kwargs": {},
        "seq_len": 2048,
        "eval_len": 4096,
        "train_fraction": 0.9,
        "val_fraction": 0.05,
        "windows_per_epoch": None,  # default: enough windows to cover the training part once
        "rc_augment": True,
        "epochs": 40,
        "batch_size": 32,
        "lr": 2e-3,
        "weight_decay": 0.1,
        "markov_max_order": 8,
    }

    def load_data(self, cfg: dict[str, Any]) -> TaskData:
        path = Path(cfg["data"])
        try:
            seq = "".join(s for _, s in read_fasta(path))
        except ValueError as err:
            raise TaskInputError(str(err)) from None
        seq_len, eval_len = int(cfg["seq_len"]), int(cfg["eval_len"])
        n = len(seq)
        train_end = int(n * float(cfg["train_fraction"]))
        val_start = int(train_end * (1 - float(cfg["val_fraction"])))
        if val_start <= seq_len or train_end - val_start < 2 or n - train_end < 2:
            raise TaskInputError(f"{path} holds {n} bases: too few for seq_len {seq_len} and the splits")
        from seqbackbone.tokenizer import DnaTokenizer

        ids = DnaTokenizer().encode(seq)
        codes = to_codes(seq)
        windows = int(cfg["windows_per_epoch"] or max(1, val_start // seq_len))
        train = RandomWindows(ids[:val_start], seq_len, windows, int(cfg["seed"]))
        # Validation and test sets are windows over the genome up to the end of their part, scoring only that part.
        val = ScoredWindows(ids[:train_end], val_start, eval_len)
        test = ScoredWindows(ids, train_end, eval_len)
        self._codes, self._bounds = codes, (val_start, train_end)
        info = {"n_bases": n, "train_bases": val_start, "val_bases": train_end - val_start,
                "test_bases": n - train_end, "scoring": f"overlapping windows of {eval_len}, stride {eval_len // 2}"}
        return TaskData(train, val, test, window_collate, info=info)

    def _base_logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """log-probabilities over A C G T for the next base at every position: (B, L, 4)."""
        logits = model(x)  # (B, L, vocab)
        return F.log_softmax(logits[..., base_token_ids()].float(), dim=-1)

    @staticmethod
    def _targets(x: torch.Tensor) -> torch.Tensor:
        """Next-base targets 0-3 for positions 0..L-2 of x (B, L), -100 where the next token is not A/C/G/T."""
        a = base_token_ids()[0]
        nxt = x[:, 1:] - a
        return torch.where((nxt >= 0) & (nxt < 4), nxt, torch.full_like(nxt, -100))

    def train_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        x = batch["x"]
        if self.cfg.get("rc_augment", True):
            from seqbackbone.tokenizer import rc_augment

            x = rc_augment(x, p=0.5, generator=generator)
        logp = self._base_logits(model, x)[:, :-1]  # (B, L-1, 4)
        return F.nll_loss(logp.reshape(-1, 4), self._targets(x).reshape(-1), ignore_index=-100)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Dataset, ctx: EvalContext) -> dict[str, float]:
        nats, count = 0.0, 0
        for batch in ctx.batches(dataset):
            x = batch["x"]
            with ctx.autocast():
                logp = self._base_logits(model, x)[:, :-1]
            target = self._targets(x)  # target at index t is the base at t + 1
            pos = torch.arange(1, x.shape[1], device=x.device)[None]  # position of each target
            scored = (pos >= batch["score_from"][:, None]) & (pos < batch["length"][:, None]) & (target >= 0)
            nll = -logp.gather(-1, target.clamp_min(0)[..., None])[..., 0]
            nats += float(nll[scored].sum())
            count += int(scored.sum())
        bpb = nats / max(count, 1) / LN2
        return {"loss": nats / max(count, 1), "bits_per_base": bpb, "scored_bases": float(count)}

    def extra_results(self, cfg: dict[str, Any], data: TaskData) -> dict[str, Any]:
        """The Markov baseline on the same split: order and smoothing chosen on the validation slice."""
        codes, (val_start, train_end) = self._codes, self._bounds
        model, table = select_markov(codes[:val_start], codes[val_start:train_end], int(cfg["markov_max_order"]))
        bits, n = model.bits(codes, start=train_end)
        val_best = table[f"k={model.order},alpha={model.alpha:g}"]
        print(f"order-{model.order} Markov baseline (alpha {model.alpha:g}, chosen on the validation slice: "
              f"{val_best:.4f} bits/base): {bits / n:.4f} bits/base on the test part", flush=True)
        return {"markov_bits_per_base": bits / n, "markov_order": model.order, "markov_alpha": model.alpha,
                "markov_val_bits_per_base": val_best, "markov_scored_bases": n}
