"""Column blocks: a weight copy that puts each program's columns together, for the split decoding step's loads.

The split kernel (decode_split_triton.py, batch 1) gives program p the channels p * per .. p * per + per - 1, and
with them the same columns of out_proj's (d_model, d_inner) and x_proj's (X, d_inner) weights. In the row-major
weight those columns are a 32-byte piece of every 3 KB row (16 bf16 channels of 1536): one line a row, so a warp's
load touches 16 lines and the SM's load unit spends four times the passes a whole-line load of the same bytes costs.
In the copy the piece of every row lies together: (ceil(d_inner / per), rows, width), zero past d_inner and in the
lanes from per to width (the kernel's power-of-two channel tile), so that every row of a block starts aligned for
vector loads whatever per is.
"""

from __future__ import annotations

import torch

# every layer's blocks start on this boundary (bytes): the kernels load table entries as 16-byte aligned pointers
_ALIGN = 16


class ColumnBlocks:
    """Per layer, `weights[l]` (rows, cols) re-laid as `layer(l)`: (ceil(cols / per), rows, width), columns
    p * per .. p * per + per - 1 in block p's first per lanes, zero elsewhere; each layer's blocks 16-byte aligned in
    one buffer. `width` defaults to per.

    A copy: `refresh()` copies the weights again (the decoder does before every prompt), so that weights changed in
    place since (training, a loaded state dict) are the ones decoded with.
    """

    def __init__(self, weights: list[torch.Tensor], per: int, width: int | None = None) -> None:
        if not weights:
            raise ValueError("need at least one weight")
        first = weights[0]
        if first.dim() != 2:
            raise ValueError(f"weights must be 2-d (rows, cols), got shape {tuple(first.shape)}")
        rows, cols = first.shape
        for w in weights:
            if w.shape != first.shape or w.dtype != first.dtype or w.device != first.device:
                raise ValueError(f"every weight must be {(rows, cols)} {first.dtype} on {first.device}, "
                                 f"got {tuple(w.shape)} {w.dtype} on {w.device}")
        width = per if width is None else width
        if not 1 <= per <= width:
            raise ValueError(f"need 1 <= per <= width, got per {per}, width {width}")
        self.weights = weights
        self.per = per
        self.width = width
        self.n_blocks = -(-cols // per)
        size = self.n_blocks * rows * width
        align = max(1, _ALIGN // first.element_size())
        stride = -(-size // align) * align
        self._flat = torch.zeros(len(weights) * stride, dtype=first.dtype, device=first.device)
        self._layers = [self._flat[i * stride: i * stride + size].view(self.n_blocks, rows, width)
                        for i in range(len(weights))]
        self.refresh()

    def refresh(self) -> None:
        """Copies every weight into its blocks (the padding stays zero). Inside or outside inference mode, whichever
        the blocks were made in."""
        cols = self.weights[0].shape[1]
        per = self.per
        full = cols // per  # blocks without padding
        with torch.inference_mode():  # an inference-mode buffer (the decoder's) takes in-place copies only there
            for w, blocks in zip(self.weights, self._layers, strict=True):
                if full:
                    blocks[:full, :, :per].copy_(w[:, : full * per].unflatten(1, (full, per)).transpose(0, 1))
                if full < self.n_blocks:
                    blocks[full, :, : cols - full * per].copy_(w[:, full * per:])

    def layer(self, index: int) -> torch.Tensor:
        """Layer `index`'s blocks, (n_blocks, rows, width), contiguous."""
        return self._layers[index]
