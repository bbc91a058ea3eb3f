"""`cast`: a dtype conversion that skips the dispatcher when there is nothing to convert."""

from __future__ import annotations

import torch


def cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in `dtype`: t itself when it already is (as `t.to(dtype)` would return it, but without the dispatch, which
    costs microseconds a call; a CPU decoding step of the PyTorch ops makes about 90 such calls per token)."""
    return t if t.dtype == dtype else t.to(dtype)
