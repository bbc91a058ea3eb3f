"""Registered audio models: bidirectional classifiers over learned frames or log-mel patches, and causal 8-bit mu-law
waveform language models.

Input: float waveforms (B, T) in [-1, 1] at 8 kHz (pretrained_cfg["sample_rate"]); forward(x, mask, sample_rate=r)
resamples audio recorded at another rate.
"""

from __future__ import annotations

from typing import Any

from ..model import SequenceModel
from ..registry import build_variant, register_model

_SIZES = {"tiny": {"d_model": 128, "n_layer": 4}, "small": {"d_model": 256, "n_layer": 8},
          "base": {"d_model": 512, "n_layer": 12}}
_CLS = {"modality": "audio", "task": "classification", "encoder": "frames", "frame_size": 32, "n_conv": 2,
        "bidirectional": "add", "num_classes": 10, "pooling": "mean", "sample_rate": 8000}
_MEL = {**_CLS, "encoder": "mel", "n_mels": 64, "n_fft": 256, "hop_length": 80, "patch_frames": 2}
_LM = {"modality": "audio", "task": "lm", "encoder": "mulaw", "bidirectional": None, "sample_rate": 8000}


@register_model
def mamba_audio_cls_tiny(**overrides: Any) -> SequenceModel:
    return build_variant("mamba_audio_cls_tiny", {**_CLS, **_SIZES["tiny"]}, overrides)


@register_model
def mamba_audio_cls_small(**overrides: Any) -> SequenceModel:
    return build_variant("mamba_audio_cls_small", {**_CLS, **_SIZES["small"]}, overrides)


@register_model
def mamba_audio_cls_base(**overrides: Any) -> SequenceModel:
    return build_variant("mamba_audio_cls_base", {**_CLS, **_SIZES["base"]}, overrides)


@register_model
def mamba_audio_mel_cls_small(**overrides: Any) -> SequenceModel:
    return build_variant("mamba_audio_mel_cls_small", {**_MEL, **_SIZES["small"]}, overrides)


@register_model
def mamba_wave_lm_tiny(**overrides: Any) -> SequenceModel:
    return build_variant("mamba_wave_lm_tiny", {**_LM, **_SIZES["tiny"]}, overrides)


@register_model
def mamba_wave_lm_small(**overrides: Any) -> SequenceModel:
    return build_variant("mamba_wave_lm_small", {**_LM, **_SIZES["small"]}, overrides)


@register_model
def mamba_wave_lm_base(**overrides: Any) -> SequenceModel:
    return build_variant("mamba_wave_lm_base", {**_LM, **_SIZES["base"]}, overrides)
