"""Heads: hidden states (B, L, D) and a mask (B, L) bool -> task output.

    ClassifierHead       pool over real tokens (mean / max / last / cls) -> dropout -> Linear -> (B, num_classes)
    TokenClassifierHead  Linear per token -> (B, L, num_classes)
    LMHead               hidden @ embedding.weight.T -> next-token logits (B, L, vocab); the weight is the encoder's
                         token embedding (tied), so it works on (B, D) step outputs as well

Every head takes `pre_logits=True` to return what goes into its last Linear: (B, D) pooled or (B, L, D) per token.
With num_classes=0 the Linear is an identity (timm's reset_classifier(0)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

POOLINGS = ("mean", "max", "last", "cls")
CLS_POSITIONS = ("first", "middle")


def pool_tokens(
    hidden: torch.Tensor, mask: torch.Tensor | None, pool: str, cls_position: str = "first"
) -> torch.Tensor:
    """Pool (B, L, D) -> (B, D) over real tokens only (mask True). "last" is each row's last real token;
    "cls" takes the class token at index 0 ("first") or (L - 1) // 2 ("middle", Vim's layout)."""
    B, L, _ = hidden.shape
    if mask is not None and mask.shape != (B, L):
        raise ValueError(f"mask must be (B, L) = {(B, L)}, got {tuple(mask.shape)}")
    if pool == "mean":
        if mask is None:
            return hidden.mean(1)
        m = mask[..., None].to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    if pool == "max":
        if mask is None:
            return hidden.amax(1)
        out = hidden.masked_fill(~mask[..., None], float("-inf")).amax(1)
        return torch.where(mask.any(1, keepdim=True), out, 0.0)  # a row without real tokens pools to 0
    if pool == "last":
        if mask is None:
            return hidden[:, -1]
        idx = (torch.arange(L, device=hidden.device)[None, :] * mask).amax(1)  # last True position (0 if none)
        return hidden[torch.arange(B, device=hidden.device), idx]
    if pool == "cls":
        return hidden[:, 0] if cls_position == "first" else hidden[:, (L - 1) // 2]
    raise ValueError(f"pool must be one of {POOLINGS}, got {pool!r}")


class ClassifierHead(nn.Module):
    """(B, L, D), mask -> pool -> dropout -> Linear(D, num_classes) -> (B, num_classes)."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        pool: str = "mean",
        cls_position: str = "first",
        drop_rate: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if pool not in POOLINGS:
            raise ValueError(f"pool must be one of {POOLINGS}, got {pool!r}")
        if cls_position not in CLS_POSITIONS:
            raise ValueError(f"cls_position must be one of {CLS_POSITIONS}, got {cls_position!r}")
        self.in_features = in_features
        self.pool = pool
        self.cls_position = cls_position
        self.drop = nn.Dropout(drop_rate)
        self.reset(num_classes, device=device, dtype=dtype)

    def reset(
        self,
        num_classes: int,
        pool: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """A fresh Linear for num_classes (0 = identity); optionally another pooling."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if pool is not None:
            if pool not in POOLINGS:
                raise ValueError(f"pool must be one of {POOLINGS}, got {pool!r}")
            self.pool = pool
        self.num_classes = num_classes
        self.fc = nn.Linear(self.in_features, num_classes, device=device, dtype=dtype) if num_classes else nn.Identity()

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(pool_tokens(hidden, mask, self.pool, self.cls_position))
        return x if pre_logits else self.fc(x)


class TokenClassifierHead(nn.Module):
    """(B, L, D) -> dropout -> Linear(D, num_classes) per token -> (B, L, num_classes); padded rows are not zeroed."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        drop_rate: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.drop = nn.Dropout(drop_rate)
        self.reset(num_classes, device=device, dtype=dtype)

    def reset(
        self, num_classes: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.in_features, num_classes, device=device, dtype=dtype) if num_classes else nn.Identity()

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(hidden)
        return x if pre_logits else self.fc(x)


class LMHead(nn.Module):
    """Language-model head tied to a token embedding: hidden (..., D) -> logits (..., vocab).

    `weight` is the very Parameter of `embedding` (one tensor, two names in the state dict), so training either
    trains both.
    """

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"LMHead ties to an nn.Embedding, got {type(embedding).__name__}")
        self.weight = embedding.weight  # tied: (vocab, D)
        self.num_classes = embedding.num_embeddings

    def forward(
        self, hidden: torch.Tensor, mask: torch.Tensor | None = None, pre_logits: bool = False
    ) -> torch.Tensor:
        return hidden if pre_logits else F.linear(hidden, self.weight.to(hidden.dtype))
