"""The order-k Markov baseline against brute-force counting and a chain of known entropy rate."""

import math
from collections import Counter

import numpy as np
import pytest
from seqbackbone.tasks.markov import MarkovModel, select_markov, to_codes


def test_counts_and_bits_match_brute_force():
    seq = "ACGTTGCANACGGTACCAGTTTACG"
    codes = to_codes(seq)
    k, alpha = 2, 0.5
    model = MarkovModel.fit(codes, k, alpha)
    brute = Counter()
    for t in range(k, len(seq)):
        window = seq[t - k : t + 1]
        if "N" not in window:
            brute[window] += 1
    for ctx in range(16):
        for b in range(4):
            word = "ACGT"[ctx // 4] + "ACGT"[ctx % 4] + "ACGT"[b]
            assert model.counts[ctx, b] == brute[word]
    # Score the last 10 letters with the first 15 as context, by hand.
    start, expected, n = 15, 0.0, 0
    for t in range(start, len(seq)):
        window = seq[t - k : t + 1]
        if "N" in window:
            continue
        ctx_total = sum(brute[window[:2] + b] for b in "ACGT")
        expected -= math.log2((brute[window] + alpha) / (ctx_total + 4 * alpha))
        n += 1
    bits, scored = model.bits(codes, start=start)
    assert scored == n and bits == pytest.approx(expected, rel=1e-12)


def markov_chain(n: int, seed: int) -> tuple[np.ndarray, float]:
    """An order-2 chain with random transition rows, and its entropy rate in bits per base."""
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.full(4, 0.3), size=16)  # (context, next)
    # Stationary distribution over contexts: power iteration on the 16-state chain.
    T = np.zeros((16, 16))
    for c in range(16):
        for b in range(4):
            T[c, (c % 4) * 4 + b] += P[c, b]
    pi = np.full(16, 1 / 16)
    for _ in range(2000):
        pi = pi @ T
    rate = float(-(pi[:, None] * P * np.log2(P)).sum())
    codes = np.empty(n, dtype=np.uint8)
    codes[:2] = rng.integers(0, 4, 2)
    u = rng.random(n)
    cum = P.cumsum(1)
    for t in range(2, n):
        codes[t] = min(int(np.searchsorted(cum[codes[t - 2] * 4 + codes[t - 1]], u[t])), 3)
    return codes, rate


def test_recovers_a_known_order_and_entropy_rate():
    codes, rate = markov_chain(120_000, seed=0)
    train, val, test_start = codes[:80_000], codes[80_000:100_000], 100_000
    model, table = select_markov(train, val, max_order=5)
    assert model.order == 2
    assert table["k=0,alpha=1"] > table["k=1,alpha=1"] > table["k=2,alpha=1"]
    assert model.bits_per_base(codes, start=test_start) == pytest.approx(rate, abs=0.03)
    # Uniform random bases: 2 bits whatever the order.
    rnd = np.random.default_rng(1).integers(0, 4, 50_000).astype(np.uint8)
    assert MarkovModel.fit(rnd[:40_000], 0).bits_per_base(rnd, start=40_000) == pytest.approx(2.0, abs=0.01)


def test_bad_arguments():
    with pytest.raises(ValueError, match="order"):
        MarkovModel.fit(to_codes("ACGT"), -1)
    with pytest.raises(ValueError, match="alpha"):
        MarkovModel.fit(to_codes("ACGT"), 1, alpha=0)
