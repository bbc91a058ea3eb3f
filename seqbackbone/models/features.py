"""Registered models for inputs that already are feature sequences (B, L, C) (sensor channels, EEG, embeddings).

Input: float (B, L, C) with C = in_chans (16 by default; override it), optional mask (B, L) bool.
"""

from __future__ import annotations

from typing import Any

from ..model import SequenceModel
from ..registry import build_variant, register_model

_FEAT = {"modality": "features", "task": "classification", "encoder": "linear", "in_chans": 16,
         "bidirectional": "add", "num_classes": 2, "pooling": "mean", "input_length": 256}


@register_model
def mamba_features_tiny(**overrides: Any) -> SequenceModel:
    return build_variant("mamba_features_tiny", {**_FEAT, "d_model": 128, "n_layer": 4}, overrides)


@register_model
def mamba_features_small(**overrides: Any) -> SequenceModel:
    return build_variant("mamba_features_small", {**_FEAT, "d_model": 256, "n_layer": 8}, overrides)
