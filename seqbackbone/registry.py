"""Model registry (timm-style): named entry points that build a SequenceModel from its defaults plus overrides.

    @register_model
    def mamba_dna_cls_tiny(**overrides) -> SequenceModel: ...

    create_model("mamba_dna_cls_tiny", num_classes=3, n_layer=2)
    create_model("mamba_dna_cls_tiny", pretrained="runs/splice/best")   # a folder written by save_pretrained
    list_models("mamba_dna_*")
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
_VARIANT_DEFAULTS: dict[str, dict[str, Any]] = {}  # recorded by build_variant
_WITH_WEIGHTS: set[str] = set()  # names with published weights (none yet; pretrained=<folder> always works)


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register fn under its __name__; a name can be registered once."""
    name = fn.__name__
    if name in _ENTRYPOINTS:
        prev = _ENTRYPOINTS[name]
        raise ValueError(f"model {name!r} is already registered (by {prev.__module__}.{prev.__qualname__})")
    _ENTRYPOINTS[name] = fn
    return fn


def is_model(name: str) -> bool:
    return name in _ENTRYPOINTS


def list_models(pattern: str | Iterable[str] = "*", pretrained: bool = False) -> list[str]:
    """Sorted registered names matching a shell pattern (or any of several); pretrained=True keeps only names
    with published weights."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    names = {n for n in _ENTRYPOINTS for p in patterns if fnmatch.fnmatchcase(n, p)}
    if pretrained:
        names &= _WITH_WEIGHTS
    return sorted(names)


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    if name not in _ENTRYPOINTS:
        close = difflib.get_close_matches(name, list(_ENTRYPOINTS), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; registered: {', '.join(sorted(_ENTRYPOINTS))}"
        raise ValueError(f"unknown model {name!r}{hint}")
    return _ENTRYPOINTS[name]


def create_model(name: str, pretrained: bool | str | os.PathLike = False, **overrides: Any) -> nn.Module:
    """Build a registered model; overrides (num_classes, n_layer, d_model, bidirectional, sample_rate, img_size,
    in_chans, ..., device, dtype) go into its config. pretrained: False, or a folder written by save_pretrained
    (a different num_classes than saved re-initialises the head only)."""
    from .hub import load_weights, read_config

    fn = model_entrypoint(name)
    if pretrained is None or pretrained is False:
        return fn(**overrides)
    if pretrained is True:
        raise ValueError(
            f"no published weights for {name!r}; pass pretrained=<folder written by save_pretrained>"
        )
    folder = Path(pretrained)
    meta = read_config(folder)
    saved = meta.get("model_name")
    if saved == name and meta.get("config") is not None:
        from .hub import from_pretrained

        return from_pretrained(folder, **overrides)
    if saved != name:
        warnings.warn(f"{folder} holds {saved!r}; building {name!r} and loading the weights that fit", stacklevel=2)
    model = fn(**overrides)
    load_weights(model, folder)
    return model


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied weight counts once)."""
    return sum(p.numel() for p in model.parameters())


def _build_on_meta(fn: Callable[..., nn.Module], **overrides: Any) -> nn.Module:
    try:
        with torch.device("meta"):
            return fn(**overrides)
    except Exception:  # an encoder whose construction needs real data falls back to the CPU
        return fn(**overrides)


def model_table(pattern: str = "*") -> list[tuple[str, int, dict[str, Any]]]:
    """(name, parameter count, pretrained_cfg) of every registered model matching pattern.

    Models are built on the meta device (no memory). For the zoo's variants, whose layers are identical, the count
    is taken from 1- and 2-layer builds (count = c1 + (n_layer - 1) * (c2 - c1)), which is exact and much faster
    than building 24 layers."""
    rows = []
    for name in list_models(pattern):
        fn = _ENTRYPOINTS[name]
        _VARIANT_DEFAULTS.pop(name, None)
        try:
            one = _build_on_meta(fn, n_layer=1)
        except Exception:  # an entry point that takes no n_layer
            one = None
        defaults = _VARIANT_DEFAULTS.get(name)  # set when fn went through build_variant
        if one is not None and defaults is not None and "n_layer" in defaults:
            c1 = count_parameters(one)
            c2 = count_parameters(_build_on_meta(fn, n_layer=2))
            n = c1 + (defaults["n_layer"] - 1) * (c2 - c1)
            cfg = dict(getattr(one, "pretrained_cfg", {}))
        else:
            model = _build_on_meta(fn)
            n, cfg = count_parameters(model), dict(getattr(model, "pretrained_cfg", {}))
        rows.append((name, n, cfg))
    return rows


def build_variant(name: str, defaults: dict[str, Any], overrides: dict[str, Any]) -> nn.Module:
    """Helper for registered entry points: config = defaults | overrides; device / dtype go to the modules."""
    from .model import SequenceModel, SequenceModelConfig

    _VARIANT_DEFAULTS[name] = dict(defaults)
    overrides = dict(overrides)
    device = overrides.pop("device", None)
    dtype = overrides.pop("dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    cfg = SequenceModelConfig.from_dict({**defaults, **overrides})
    return SequenceModel.from_config(cfg, name=name, device=device, dtype=dtype)
