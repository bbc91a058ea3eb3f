"""Registered DNA models: bidirectional sequence classifiers and causal language models over DnaTokenizer ids.

Input: token ids (B, L) long (DnaTokenizer.batch_encode); [PAD] positions are masked automatically.
"""

from __future__ import annotations

from typing import Any

from ..model import SequenceModel
from ..registry import build_variant, register_model

_SIZES = {"tiny": {"d_model": 128, "n_layer": 4}, "small": {"d_model": 256, "n_layer": 8},
          "base": {"d_model": 512, "n_layer": 12}}
_CLS = {"modality": "dna", "task": "classification", "bidirectional": "add", "num_classes": 2, "pooling": "mean",
        "input_length": 512}
_LM = {"modality": "dna", "task": "lm", "bidirectional": None, "input_length": 1024}


@register_model
def mamba_dna_cls_tiny(**overrides: Any) -> SequenceModel:
    return build_variant("mamba_dna_cls_tiny", {**_CLS, **_SIZES["tiny"]}, overrides)


@register_model
def mamba_dna_cls_small(**overrides: Any) -> SequenceModel:
    return build_variant("mamba_dna_cls_small", {**_CLS, **_SIZES["small"]}, overrides)


@register_model
def mamba_dna_cls_base(**overrides: Any) -> SequenceModel:
    return build_variant("mamba_dna_cls_base", {**_CLS, **_SIZES["base"]}, overrides)


@register_model
def mamba_dna_lm_tiny(**overrides: Any) -> SequenceModel:
    return build_variant("mamba_dna_lm_tiny", {**_LM, **_SIZES["tiny"]}, overrides)


@register_model
def mamba_dna_lm_small(**overrides: Any) -> SequenceModel:
    return build_variant("mamba_dna_lm_small", {**_LM, **_SIZES["small"]}, overrides)


@register_model
def mamba_dna_lm_base(**overrides: Any) -> SequenceModel:
    return build_variant("mamba_dna_lm_base", {**_LM, **_SIZES["base"]}, overrides)
