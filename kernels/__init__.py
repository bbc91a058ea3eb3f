"""Fused ops of the selective state-space model.

Each op has a readable PyTorch twin (`*_ref`) and a public function that dispatches: Triton on CUDA tensors, PyTorch
elsewhere (`backend(tensor)` says which; `SEQBACKBONE_KERNELS=torch|triton` forces one).
"""

from .conv import causal_conv1d, causal_conv1d_ref, causal_conv1d_update, causal_conv1d_update_ref
from .dispatch import backend
from .norm import rms_norm, rms_norm_ref
from .scan import selective_scan
from .scan_torch import selective_scan_ref
from .step import (
    selective_state_update,
    selective_state_update_fused,
    selective_state_update_fused_ref,
    selective_state_update_ref,
)

__all__ = [
    "backend",
    "causal_conv1d",
    "causal_conv1d_ref",
    "causal_conv1d_update",
    "causal_conv1d_update_ref",
    "rms_norm",
    "rms_norm_ref",
    "selective_scan",
    "selective_scan_ref",
    "selective_state_update",
    "selective_state_update_fused",
    "selective_state_update_fused_ref",
    "selective_state_update_ref",
]
