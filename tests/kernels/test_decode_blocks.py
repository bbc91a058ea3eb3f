"""ColumnBlocks: the split decoding step's copy of out_proj's and x_proj's weights in per-program column blocks."""

from __future__ import annotations

import pytest
import torch
from seqbackbone.kernels.decode_blocks import ColumnBlocks


@pytest.mark.parametrize(("rows", "cols", "per", "width", "dtype"), [
    (5, 48, 16, 16, torch.bfloat16), (3, 37, 16, 16, torch.float32), (4, 7, 8, 8, torch.bfloat16),
    (5, 9, 7, 7, torch.float16), (2, 9, 1, 1, torch.float32), (3, 44, 14, 16, torch.bfloat16),
    (2, 10, 3, 4, torch.float32)])
def test_blocks_hold_each_programs_columns_together(rows, cols, per, width, dtype):
    """Element (p, row, lane) of layer l's blocks, at flat offset p * rows * width + row * width + lane from the
    layer's start (the kernel's address), is column p * per + lane of that row for lane < per, and zero past the last
    column and in the lanes from per to width; every layer starts 16-byte aligned (the kernels' table entries),
    whatever the sizes."""
    gen = torch.Generator().manual_seed(rows * 100 + cols)
    weights = [torch.randn(rows, cols, generator=gen).to(dtype) for _ in range(3)]
    blocks = ColumnBlocks(weights, per, width)
    n_blocks = -(-cols // per)
    assert blocks.n_blocks == n_blocks
    for layer, w in enumerate(weights):
        assert blocks.layer(layer).shape == (n_blocks, rows, width) and blocks.layer(layer).is_contiguous()
        assert blocks.layer(layer).data_ptr() % 16 == 0
        flat = blocks.layer(layer).reshape(-1)
        padded = torch.cat([w, torch.zeros(rows, n_blocks * per - cols, dtype=dtype)], dim=1)
        p, row, lane = torch.meshgrid(torch.arange(n_blocks), torch.arange(rows), torch.arange(width), indexing="ij")
        got = flat[p * rows * width + row * width + lane]
        inside = lane < per
        assert torch.equal(got[inside], padded[row, p * per + lane.clamp(max=per - 1)][inside])
        assert not got[~inside].any()


def test_refresh_copies_weights_changed_in_place():
    weights = [torch.randn(4, 20) for _ in range(2)]
    blocks = ColumnBlocks(weights, 8)
    address = blocks.layer(1).data_ptr()
    with torch.no_grad():
        weights[1].mul_(-3.0)
    assert not torch.equal(blocks.layer(1)[0, :, 0], weights[1][:, 0])  # a copy: stale until refreshed
    blocks.refresh()
    assert torch.equal(blocks.layer(1)[2, :, 3], weights[1][:, 19])
    assert torch.equal(blocks.layer(1)[2, :, 4:], torch.zeros(4, 4))  # the padding stays zero
    assert blocks.layer(1).data_ptr() == address  # same buffer: a captured graph keeps reading it


@pytest.mark.parametrize("made_in_inference_mode", [False, True])
def test_refresh_inside_and_outside_inference_mode(made_in_inference_mode):
    """The decoder makes its blocks in inference mode and refreshes them there; a refresh outside it works too."""
    weight = torch.randn(3, 10, requires_grad=True)
    if made_in_inference_mode:
        with torch.inference_mode():
            blocks = ColumnBlocks([weight.detach()], 4)
    else:
        blocks = ColumnBlocks([weight.detach()], 4)
    with torch.no_grad():
        weight.add_(1.0)
    blocks.refresh()
    assert torch.equal(blocks.layer(0)[2, :, :2], weight.detach()[:, 8:])
    with torch.inference_mode():
        weight_copy = weight.detach().clone()
        blocks.refresh()
    assert torch.equal(blocks.layer(0)[0, :, :4], weight_copy[:, :4])


def test_bad_weights_are_refused():
    with pytest.raises(ValueError, match="at least one"):
        ColumnBlocks([], 4)
    with pytest.raises(ValueError, match=r"every weight must be \(4, 20\)"):
        ColumnBlocks([torch.zeros(4, 20), torch.zeros(4, 21)], 4)
    with pytest.raises(ValueError, match="must be 2-d"):
        ColumnBlocks([torch.zeros(4)], 4)
    with pytest.raises(ValueError, match="need 1 <= per <= width"):
        ColumnBlocks([torch.zeros(4, 20)], 0)
    with pytest.raises(ValueError, match="need 1 <= per <= width"):
        ColumnBlocks([torch.zeros(4, 20)], 8, 4)
