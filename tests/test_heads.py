"""Heads: pooling over real tokens against per-row loops, the per-token head and the tied LM head."""

from __future__ import annotations

import pytest
import torch

from seqbackbone.heads import ClassifierHead, LMHead, TokenClassifierHead, pool_tokens


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(3, 7, 5, generator=g)
    lengths = [7, 4, 1]
    mask = torch.arange(7)[None] < torch.tensor(lengths)[:, None]
    return h, mask, lengths


@pytest.mark.parametrize("pool", ["mean", "max", "last"])
def test_pooling_over_real_tokens(pool):
    h, mask, lengths = _batch()
    out = pool_tokens(h, mask, pool)
    for b, n in enumerate(lengths):
        real = h[b, :n]
        ref = {"mean": real.mean(0), "max": real.max(0).values, "last": real[-1]}[pool]
        torch.testing.assert_close(out[b], ref)
    h2 = h.clone()
    h2[~mask] = 1e4  # whatever lies in the padding must not matter
    torch.testing.assert_close(pool_tokens(h2, mask, pool), out)
    # without a mask every token is real
    torch.testing.assert_close(pool_tokens(h, None, pool)[0], out[0])


def test_cls_pooling_positions():
    h, _, _ = _batch()
    torch.testing.assert_close(pool_tokens(h, None, "cls", "first"), h[:, 0])
    torch.testing.assert_close(pool_tokens(h, None, "cls", "middle"), h[:, 3])


def test_classifier_head_reset_and_pre_logits():
    h, mask, _ = _batch()
    head = ClassifierHead(5, 4, pool="mean")
    assert head(h, mask).shape == (3, 4)
    torch.testing.assert_close(head(h, mask, pre_logits=True), pool_tokens(h, mask, "mean"))
    head.reset(0)
    assert head(h, mask).shape == (3, 5)
    head.reset(2, pool="max")
    torch.testing.assert_close(head(h, mask), head.fc(pool_tokens(h, mask, "max")))
    with pytest.raises(ValueError, match="pool"):
        ClassifierHead(5, 2, pool="median")


def test_token_head():
    h, mask, _ = _batch()
    head = TokenClassifierHead(5, 3)
    out = head(h, mask)
    assert out.shape == (3, 7, 3)
    torch.testing.assert_close(out, h @ head.fc.weight.T + head.fc.bias)


def test_lm_head_is_tied():
    emb = torch.nn.Embedding(9, 5)
    head = LMHead(emb)
    h, mask, _ = _batch()
    logits = head(h, mask)
    torch.testing.assert_close(logits, h @ emb.weight.T)
    assert head(h[:, 0]).shape == (3, 9)  # one decoding step
    logits.sum().backward()
    assert emb.weight.grad is not None and head.weight is emb.weight
    with pytest.raises(TypeError):
        LMHead(torch.nn.Linear(5, 9))
