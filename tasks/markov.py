"""Order-k Markov models of DNA with additive smoothing: the baseline for next-nucleotide prediction.

P(x_t = b | x_{t-k..t-1} = c) = (count(c, b) + alpha) / (count(c) + 4 alpha), counted on training bases. Sequences
are base codes 0-3 (A C G T); any other code (N, ambiguity letters) breaks the context: positions whose target or
context holds one are neither counted nor scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BASE_CODES = {c: i for i, c in enumerate("ACGT")}


def to_codes(seq: str) -> np.ndarray:
    """A C G T -> 0 1 2 3 (any case), every other letter -> 4. Returns uint8 (L,)."""
    lut = np.full(256, 4, dtype=np.uint8)
    for c, i in BASE_CODES.items():
        lut[ord(c)] = lut[ord(c.lower())] = i
    return lut[np.frombuffer(seq.encode("ascii"), dtype=np.uint8)]


def _contexts(codes: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """(context index, valid) for every position t >= order: the k preceding bases read as a base-4 number, and
    whether they and the base at t are all A/C/G/T. Both (L - order,)."""
    n = len(codes)
    bad = codes > 3
    ctx = np.zeros(n - order, dtype=np.int64)
    valid = ~bad[order:]
    for j in range(order):  # base at t - order + j is digit j (most significant first)
        part = codes[j : n - order + j]
        ctx = ctx * 4 + np.where(part > 3, 0, part)
        valid &= ~bad[j : n - order + j]
    return ctx, valid


@dataclass
class MarkovModel:
    """Counts (4^order, 4) of an order-`order` model and its smoothing `alpha`."""

    order: int
    alpha: float
    counts: np.ndarray

    @classmethod
    def fit(cls, codes: np.ndarray, order: int, alpha: float = 1.0) -> MarkovModel:
        if order < 0:
            raise ValueError(f"order must be >= 0, got {order}")
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        ctx, valid = _contexts(codes, order)
        target = codes[order:].astype(np.int64)
        idx = ctx[valid] * 4 + target[valid]
        counts = np.bincount(idx, minlength=4 ** (order + 1)).reshape(4**order, 4)
        return cls(order, alpha, counts)

    def log2_probs(self) -> np.ndarray:
        """log2 P(base | context), (4^order, 4)."""
        c = self.counts + self.alpha
        return np.log2(c) - np.log2(c.sum(1, keepdims=True))

    def bits(self, codes: np.ndarray, start: int = 0) -> tuple[float, int]:
        """(total bits, number of scored bases) for the bases codes[start:], using codes[:start] as context only."""
        k = self.order
        cut = max(start - k, 0)  # the k bases before `start` are all the context needed
        codes, start = codes[cut:], start - cut
        ctx, valid = _contexts(codes, k)
        target = codes[k:].astype(np.int64)
        first = max(start - k, 0)  # position t = first + k is the first scored base
        ctx, valid, target = ctx[first:], valid[first:], target[first:]
        lp = self.log2_probs()[ctx[valid], target[valid]]
        return float(-lp.sum()), int(valid.sum())

    def bits_per_base(self, codes: np.ndarray, start: int = 0) -> float:
        total, n = self.bits(codes, start)
        return total / max(n, 1)


def select_markov(
    train: np.ndarray, val: np.ndarray, max_order: int = 8, alphas: tuple[float, ...] = (0.1, 0.5, 1.0)
) -> tuple[MarkovModel, dict[str, float]]:
    """Fit every order 0..max_order and alpha on `train`, score each on `val` (with the end of `train` as its
    context), and return the best (refitted on nothing else) with a table {"k=.., alpha=..": bits/base}."""
    joined = np.concatenate([train, val])
    best, best_bits, table = None, float("inf"), {}
    for k in range(max_order + 1):
        for alpha in alphas:
            model = MarkovModel.fit(train, k, alpha)
            bpb = model.bits_per_base(joined, start=len(train))
            table[f"k={k},alpha={alpha:g}"] = bpb
            if bpb < best_bits:
                best, best_bits = model, bpb
    assert best is not None
    return best, table
