"""DNA encoder: token ids (B, L) from `DnaTokenizer` -> embeddings (B, L, d_model) and a mask.

When no mask is given it is derived from the ids ([PAD] = 0 is padding). `embed(ids)` and `embedding.weight` are the
hooks a tied language-model head and a generation loop use.

Two options for classifiers on short, aligned sequences (both off by default; language models leave them off, since
decoding embeds one token at a time through `embed`):
    max_len   learned absolute position embeddings for positions 0..max_len-1. Where a signal sits at a fixed offset
              (a splice junction at the centre of a 60-base window), a position-free encoder must learn to count
              positions through the recurrence; with few examples it overfits instead.
    drop_rate dropout on the token embeddings (training only).
"""

from __future__ import annotations

import torch
from torch import nn

from ..tokenizer import PAD_ID, VOCAB_SIZE, DnaTokenizer, rc_augment, reverse_complement_ids

__all__ = ["DnaEncoder", "DnaTokenizer", "check_token_ids", "rc_augment", "reverse_complement_ids"]


def check_token_ids(x: torch.Tensor, vocab_size: int, what: str = "DNA models") -> torch.Tensor:
    """Validate token ids (B, L): an integer tensor; returns it as long."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} take token ids (B, L) long, got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(
            f"{what} take token ids (B, L) long (from DnaTokenizer.batch_encode), got dtype {x.dtype}; "
            "float waveforms belong to an audio model"
        )
    if x.ndim != 2:
        raise ValueError(f"{what} take token ids of shape (B, L), got shape {tuple(x.shape)}")
    return x.long()


class DnaEncoder(nn.Module):
    """Token embedding for DNA: ids (B, L) long -> (B, L, D); mask defaults to ids != pad_id."""

    def __init__(
        self,
        d_model: int,
        vocab_size: int = VOCAB_SIZE,
        pad_id: int = PAD_ID,
        max_len: int | None = None,
        drop_rate: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.vocab_size = vocab_size
        self.pad_id = pad_id
        self.embedding = nn.Embedding(vocab_size, d_model, device=device, dtype=dtype)
        nn.init.normal_(self.embedding.weight, std=0.02)
        if max_len is not None and (not isinstance(max_len, int) or max_len <= 0):
            raise ValueError(f"max_len must be a positive int or None, got {max_len!r}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must lie in [0, 1), got {drop_rate}")
        self.max_len = max_len
        self.pos_embed: nn.Parameter | None = None
        if max_len is not None:
            self.pos_embed = nn.Parameter(torch.empty(max_len, d_model, device=device, dtype=dtype))
            nn.init.normal_(self.pos_embed, std=0.02)
        self.drop = nn.Dropout(drop_rate)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"} if self.pos_embed is not None else set()

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) long -> (B, L, D), no checks (the generation hot path)."""
        return self.embedding(ids)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = check_token_ids(x, self.vocab_size)
        pad = x == self.pad_id
        # one host sync for both questions: any id out of range, any padding
        out_of_range, has_pad = torch.stack([((x < 0) | (x >= self.vocab_size)).any(), pad.any()]).tolist()
        if out_of_range:
            lo, hi = int(x.min()), int(x.max())
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got values in [{lo}, {hi}]")
        if mask is None:
            # Only pass a mask when there is padding: the unmasked path of the backbone is the faster one.
            mask = ~pad if has_pad else None
        elif mask.shape != x.shape:
            raise ValueError(f"mask must have the shape of the ids {tuple(x.shape)}, got {tuple(mask.shape)}")
        else:
            mask = mask.bool()
        tokens = self.embedding(x)
        if self.pos_embed is not None:
            if x.shape[1] > self.max_len:
                raise ValueError(
                    f"sequences of length {x.shape[1]} exceed the encoder's position embeddings (max_len "
                    f"{self.max_len}); crop them or build the model with a larger max_len"
                )
            tokens = tokens + self.pos_embed[: x.shape[1]]  # (L, D) broadcast over the batch
        return self.drop(tokens), mask
