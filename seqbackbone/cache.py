"""Recurrent state for decoding: one `MambaCache` per causal layer, an `InferenceCache` for a whole backbone.

Dimensions: B batch, Di = expand * d_model inner channels, W conv width (d_conv), N state size (d_state).

The tensors are allocated once and updated in place (prefill copies into them, each step rolls the conv window and
advances the SSM state), so their addresses never change: a decoding step can be captured in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class MambaCache:
    """State of one causal Mamba layer after the tokens seen so far.

    conv_state: (B, Di, W) the last W inputs of the depthwise conv, oldest first, in the layer's dtype.
    ssm_state:  (B, Di, N) the selective-scan state h, always fp32.
    """

    conv_state: torch.Tensor
    ssm_state: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.conv_state.shape[0]

    def reset(self) -> None:
        """Zero both states in place (start of a new sequence)."""
        self.conv_state.zero_()
        self.ssm_state.zero_()


@dataclass
class InferenceCache:
    """Per-layer states of a backbone, and how many tokens have been fed (prefill length plus steps)."""

    layers: list[MambaCache]
    seqlen_offset: int = 0
    # free-form room for callers (e.g. a generation loop's CUDA graph); the backbone never reads it
    extra: dict = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.layers[0].batch_size

    def reset(self) -> None:
        """Zero every layer's state in place and rewind the token count."""
        for layer in self.layers:
            layer.reset()
        self.seqlen_offset = 0
