"""Character tokenizer for DNA, and the reverse complement of token ids.

Vocabulary (ids are public API: saved models and data pipelines depend on them):

    0 [PAD]   1 [CLS]   2 [SEP]   3 [MASK]   4 A   5 C   6 G   7 T   8 N

Lower-case letters are read as upper case. Any other letter (IUPAC ambiguity codes R, Y, S, W, K, M, B, D, H, V, or
stray letters) becomes N, or raises with `strict=True`; characters that are not letters (digits, punctuation,
whitespace) always raise, since they point at a parsing bug rather than at an uncertain base.

Dimension glossary: B batch, L sequence length.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[CLS]", "[SEP]", "[MASK]")
BASES: tuple[str, ...] = ("A", "C", "G", "T", "N")
PAD_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3
A_ID, C_ID, G_ID, T_ID, N_ID = 4, 5, 6, 7, 8
VOCAB_SIZE = len(SPECIAL_TOKENS) + len(BASES)

# Byte -> id lookup; -1 marks a non-letter (always an error), -2 an unknown letter (N, or an error when strict).
_LOOKUP = np.full(256, -1, dtype=np.int64)
for _c in range(256):
    if chr(_c).isalpha():
        _LOOKUP[_c] = -2
for _i, _b in enumerate(BASES):
    _LOOKUP[ord(_b)] = _LOOKUP[ord(_b.lower())] = len(SPECIAL_TOKENS) + _i

# id -> id of the complementary base; specials map to themselves.
_COMPLEMENT = torch.arange(VOCAB_SIZE)
_COMPLEMENT[A_ID], _COMPLEMENT[T_ID] = T_ID, A_ID
_COMPLEMENT[C_ID], _COMPLEMENT[G_ID] = G_ID, C_ID

_ID_TO_TOKEN: tuple[str, ...] = SPECIAL_TOKENS + BASES
_DNA_COMPLEMENT = str.maketrans("ACGTNacgtn", "TGCANtgcan")


def reverse_complement_ids(ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reverse complement of token ids (..., L), per row, with special tokens and padding kept in place.

    The bases of each row (ids 4-8 where `mask` is True) are reversed among their own positions and complemented
    (A<->T, C<->G, N->N); every other position keeps its token, so a right-padded row stays right-padded and
    `[CLS] ... [SEP]` keep their slots. Applying it twice gives the input back.
    """
    if ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"ids must be integer token ids (torch.long), got dtype {ids.dtype}")
    if ids.ndim == 0:
        raise ValueError("ids must have at least one dimension (..., L), got a scalar")
    shape = ids.shape
    flat = ids.reshape(-1, shape[-1]).long()
    is_base = (flat >= A_ID) & (flat < VOCAB_SIZE)
    if mask is not None:
        if mask.shape != shape:
            raise ValueError(f"mask must have the shape of ids {tuple(shape)}, got {tuple(mask.shape)}")
        is_base = is_base & mask.reshape(-1, shape[-1]).bool()
    L = flat.shape[-1]
    # order[b, r] = position of the r-th base of row b (bases first, in order; stable sort keeps it)
    order = torch.sort((~is_base).to(torch.int8), dim=-1, stable=True).indices
    count = is_base.sum(-1, keepdim=True)  # (B', 1)
    rank = torch.cumsum(is_base.long(), dim=-1) - 1  # rank of each base within its row
    partner_rank = (count - 1 - rank).clamp(0, max(L - 1, 0))
    src = order.gather(-1, partner_rank)  # position whose base lands here
    complement = _COMPLEMENT.to(flat.device)[flat.gather(-1, src).clamp(0, VOCAB_SIZE - 1)]
    out = torch.where(is_base, complement, flat)
    return out.to(ids.dtype).reshape(shape)


def rc_augment(
    ids: torch.Tensor, mask: torch.Tensor | None = None, p: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Replace each row of ids (B, L) by its reverse complement with probability p (training augmentation).

    Use it on the batch before computing language-model targets, so inputs and targets come from the same strand.
    """
    if ids.ndim != 2:
        raise ValueError(f"ids must be (B, L), got shape {tuple(ids.shape)}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    flip = torch.rand(ids.shape[0], generator=generator, device="cpu" if generator is None else generator.device)
    flip = (flip < p).to(ids.device)
    return torch.where(flip[:, None], reverse_complement_ids(ids, mask), ids)


class DnaTokenizer:
    """Character-level DNA tokenizer: A C G T N plus [PAD]=0, [CLS]=1, [SEP]=2, [MASK]=3 (bases are ids 4-8).

    Args:
        strict: raise on letters other than A C G T N (any case) instead of reading them as N.
        add_special_tokens: wrap every encoded sequence as `[CLS] seq [SEP]` (off by default).
    """

    pad_id = PAD_ID
    cls_id = CLS_ID
    sep_id = SEP_ID
    mask_id = MASK_ID
    n_id = N_ID
    vocab_size = VOCAB_SIZE
    vocab: dict[str, int] = {t: i for i, t in enumerate(_ID_TO_TOKEN)}

    def __init__(self, strict: bool = False, add_special_tokens: bool = False) -> None:
        self.strict = strict
        self.add_special_tokens = add_special_tokens

    def __repr__(self) -> str:
        return f"DnaTokenizer(strict={self.strict}, add_special_tokens={self.add_special_tokens})"

    def __len__(self) -> int:
        return VOCAB_SIZE

    def _encode_np(self, seq: str) -> np.ndarray:
        if not isinstance(seq, str):
            raise TypeError(f"seq must be a str, got {type(seq).__name__}")
        try:
            raw = np.frombuffer(seq.encode("ascii"), dtype=np.uint8)
        except UnicodeEncodeError as err:
            raise ValueError(
                f"seq has a non-ASCII character {seq[err.start]!r} at position {err.start}; expected DNA letters"
            ) from None
        ids = _LOOKUP[raw]
        bad = np.flatnonzero(ids == -1)
        if bad.size:
            pos = int(bad[0])
            raise ValueError(f"seq has a non-letter character {seq[pos]!r} at position {pos}; expected DNA letters")
        unknown = np.flatnonzero(ids == -2)
        if unknown.size:
            if self.strict:
                pos = int(unknown[0])
                raise ValueError(
                    f"seq has letter {seq[pos]!r} at position {pos}, which is not one of A C G T N "
                    "(strict=True; use strict=False to read it as N)"
                )
            ids = ids.copy()
            ids[unknown] = N_ID
        if self.add_special_tokens:
            ids = np.concatenate([[CLS_ID], ids, [SEP_ID]])
        return ids

    def encode(self, seq: str) -> torch.Tensor:
        """Token ids (L,) long of one sequence."""
        return torch.from_numpy(self._encode_np(seq).astype(np.int64))

    def decode(self, ids: torch.Tensor | Sequence[int], skip_special_tokens: bool = True) -> str | list[str]:
        """Letters of ids (L,) -> str, or of (B, L) -> list[str]. Padding and other specials are dropped by default."""
        t = torch.as_tensor(ids)
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(f"ids must be integer token ids, got dtype {t.dtype}")
        if t.ndim == 2:
            return [self.decode(row, skip_special_tokens) for row in t]
        if t.ndim != 1:
            raise ValueError(f"ids must be (L,) or (B, L), got shape {tuple(t.shape)}")
        out = []
        for i in t.tolist():
            if not 0 <= i < VOCAB_SIZE:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {VOCAB_SIZE})")
            if i < A_ID and skip_special_tokens:
                continue
            out.append(_ID_TO_TOKEN[i])
        return "".join(out)

    def batch_encode(
        self, seqs: Sequence[str], max_length: int | None = None, pad_to: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids (B, L) long and mask (B, L) bool (True = real token).

        max_length crops longer sequences (keeping their start); pad_to pads every row to at least that length
        (L = max(pad_to, longest row)). Without either, L is the longest row.
        """
        if isinstance(seqs, str):
            raise TypeError("batch_encode takes a list of sequences; for one sequence use encode(seq)")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        rows = [self._encode_np(s) for s in seqs]
        if max_length is not None:
            rows = [r[:max_length] for r in rows]
        L = max((len(r) for r in rows), default=0)
        if pad_to is not None:
            L = max(L, pad_to)
        ids = torch.full((len(rows), L), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(rows), L), dtype=torch.bool)
        for b, r in enumerate(rows):
            ids[b, : len(r)] = torch.from_numpy(r)
            mask[b, : len(r)] = True
        return ids, mask

    @staticmethod
    def reverse_complement(seq_or_ids: str | torch.Tensor, mask: torch.Tensor | None = None) -> str | torch.Tensor:
        """Reverse complement of a DNA string, or of ids (..., L) with specials and padding kept in place."""
        if isinstance(seq_or_ids, str):
            return seq_or_ids.translate(_DNA_COMPLEMENT)[::-1]
        if isinstance(seq_or_ids, torch.Tensor):
            return reverse_complement_ids(seq_or_ids, mask)
        raise TypeError(f"expected a str or a tensor of ids, got {type(seq_or_ids).__name__}")
