"""Registers the image models in timm's registry, so `timm.create_model("vimamba_tiny_patch16_224")` works in a
program that imports seqbackbone, whichever of the two it imports first.

timm (with the torchvision it loads) takes seconds to import, so `import seqbackbone` does not import it: when timm is
already loaded the models are registered at once, otherwise a one-shot import hook registers them right after timm's
own import finishes (`register_when_timm_loads`, called by seqbackbone.models). `register_image_models()` registers
them explicitly at any time. Names already taken in timm are left alone (a warning says so).

timm's keyword arguments map onto the config: num_classes, in_chans, img_size, drop_rate as they are, global_pool
("avg" -> "mean", "max", "token" -> "cls"); timm's pretrained-cfg plumbing (pretrained_cfg, pretrained_cfg_overlay,
cache_dir) is ignored; pretrained=<folder> loads a save_pretrained folder.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

from torch import nn

from .registry import create_model, list_models, model_entrypoint

_POOLS = {"avg": "mean", "mean": "mean", "max": "max", "token": "cls", "cls": "cls", "last": "last"}
_TIMM_ONLY = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")
REGISTERED: list[str] = []
_LOCK = threading.Lock()


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
    """Register every seqbackbone image model (vimamba_*, mamba_pixel_*) in timm (importing timm); returns the names
    registered so far."""
    import timm
    from timm.models import register_model as timm_register_model

    mod = sys.modules[__name__]
    with _LOCK:
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


class _RegisterAfterExec(importlib.abc.Loader):
    """Wraps timm's own loader: runs it, then registers the image models. Anything else is asked of the wrapped
    loader (resource readers and the like)."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        try:
            register_image_models()
        except Exception as err:  # a registration problem must not break the user's `import timm`
            warnings.warn(f"seqbackbone could not register its image models in timm: {err}", stacklevel=2)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _TimmImportHook(importlib.abc.MetaPathFinder):
    """A one-shot finder: on the first `import timm` it removes itself, finds timm the usual way and wraps its
    loader so that the image models are registered as soon as timm has loaded."""

    def find_spec(self, fullname: str, path: Any = None, target: ModuleType | None = None):
        if fullname != "timm":
            return None
        _remove_hook(self)
        spec = importlib.util.find_spec("timm")  # the other finders, as if this one were not there
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _RegisterAfterExec(spec.loader)
        return spec


def _remove_hook(hook: _TimmImportHook) -> None:
    try:
        sys.meta_path.remove(hook)
    except ValueError:
        pass


def register_when_timm_loads() -> None:
    """Register the image models in timm now if timm is loaded, else as soon as it is (without importing it)."""
    if "timm" in sys.modules:
        register_image_models()
    elif not any(isinstance(f, _TimmImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TimmImportHook())
