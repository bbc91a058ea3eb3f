"""Registers the image models in timm's registry, so `timm.create_model("vimamba_tiny_patch16_224")` works after
`import seqbackbone` (seqbackbone.models calls register_image_models once the zoo is registered). Names already
taken in timm are left alone (a warning says so).

timm's keyword arguments map onto the config: num_classes, in_chans, img_size, drop_rate as they are, global_pool
("avg" -> "mean", "max", "token" -> "cls"); timm's pretrained-cfg plumbing (pretrained_cfg, pretrained_cfg_overlay,
cache_dir) is ignored; pretrained=<folder> loads a save_pretrained folder.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from typing import Any

import timm
from timm.models import register_model as timm_register_model
from torch import nn

from .registry import create_model, list_models, model_entrypoint

_POOLS = {"avg": "mean", "mean": "mean", "max": "max", "token": "cls", "cls": "cls", "last": "last"}
_TIMM_ONLY = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")
REGISTERED: list[str] = []


def _timm_entrypoint(name: str) -> Callable[..., nn.Module]:
    def entry(pretrained: bool | str = False, **kwargs: Any) -> nn.Module:
        for key in _TIMM_ONLY:
            kwargs.pop(key, None)
        if "global_pool" in kwargs:
            pool = kwargs.pop("global_pool")
            if pool not in _POOLS:
                raise ValueError(f"global_pool must be one of {sorted(_POOLS)}, got {pool!r}")
            kwargs["pooling"] = _POOLS[pool]
        return create_model(name, pretrained=pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = __name__
    entry.__doc__ = model_entrypoint(name).__doc__
    return entry


def register_image_models() -> list[str]:
    """Register every seqbackbone image model (vimamba_*, mamba_pixel_*) in timm; returns the names added."""
    mod = sys.modules[__name__]
    for name in list_models(["vimamba_*", "mamba_pixel_*"]):
        if name in REGISTERED:
            continue
        if timm.is_model(name):
            warnings.warn(f"timm already has a model named {name!r}; it is not replaced", stacklevel=2)
            continue
        fn = _timm_entrypoint(name)
        setattr(mod, name, fn)
        timm_register_model(fn)
        REGISTERED.append(name)
    return list(REGISTERED)

