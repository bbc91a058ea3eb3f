"""Registered image models: Vim-style patch models (bidirectional scan over patches, class token in the middle,
absolute position embeddings resampled for other input sizes) and a pixel-sequence model for sequential MNIST.

Input: float images (B, C, H, W) normalised with pretrained_cfg["mean"] / ["std"]. The vimamba_* names are also
registered in timm (seqbackbone.timm_compat), so timm.create_model("vimamba_tiny_patch16_224") works.
"""

from __future__ import annotations

from typing import Any

from ..model import SequenceModel
from ..registry import build_variant, register_model

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
_VIM = {"modality": "image", "task": "classification", "encoder": "patch", "img_size": 224, "patch_size": 16,
        "in_chans": 3, "cls_token": "middle", "pooling": "cls", "bidirectional": "add", "num_classes": 10}
_MNIST = {"img_size": 28, "in_chans": 1, "mean": MNIST_MEAN, "std": MNIST_STD, "num_classes": 10}


@register_model
def vimamba_tiny_patch16_224(**overrides: Any) -> SequenceModel:
    return build_variant("vimamba_tiny_patch16_224", {**_VIM, "d_model": 192, "n_layer": 24}, overrides)


@register_model
def vimamba_small_patch16_224(**overrides: Any) -> SequenceModel:
    return build_variant("vimamba_small_patch16_224", {**_VIM, "d_model": 384, "n_layer": 24}, overrides)


@register_model
def vimamba_base_patch16_224(**overrides: Any) -> SequenceModel:
    return build_variant("vimamba_base_patch16_224", {**_VIM, "d_model": 768, "n_layer": 24}, overrides)


@register_model
def vimamba_tiny_patch4_28(**overrides: Any) -> SequenceModel:
    """MNIST-sized: 28x28x1 images as 7x7 patches of 4x4 pixels."""
    return build_variant(
        "vimamba_tiny_patch4_28", {**_VIM, **_MNIST, "patch_size": 4, "d_model": 128, "n_layer": 4}, overrides
    )


@register_model
def mamba_pixel_tiny(**overrides: Any) -> SequenceModel:
    """Sequential MNIST: the 784 pixels of a (1, 28, 28) image in raster order, one token each, scanned both ways."""
    defaults = {"modality": "image", "task": "classification", "encoder": "pixel", "bidirectional": "add",
                "pooling": "mean", "d_model": 128, "n_layer": 4, "cls_token": None, **_MNIST}
    return build_variant("mamba_pixel_tiny", defaults, overrides)
