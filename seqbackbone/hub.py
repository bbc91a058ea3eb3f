"""Saving and loading models as a folder: config.json + model.safetensors.

    config.json         {"format": 1, "model_name": ..., "config": SequenceModelConfig as a dict, "pretrained_cfg": ...}
    model.safetensors   the state dict; a tied weight (LM head = token embedding) is stored once

Files are written to a temporary name in the same folder and moved into place with os.replace, so a crash never
leaves a half-written file under the final name. Loading reads safetensors only (nothing is unpickled). State-dict
keys prefixed by "module." (DataParallel / DDP) or "_orig_mod." (torch.compile) load as well. When the head's shape
differs from the saved one (another num_classes), the head keeps its fresh initialisation and a warning says so.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
_PREFIXES = ("module.", "_orig_mod.")


def _atomic_write(path: Path, write: Any) -> None:
    """Call write(tmp_path), then move tmp_path onto path."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def _tied_groups(model: nn.Module) -> list[list[str]]:
    """Names that refer to one and the same Parameter (e.g. head.weight and encoder.embedding.weight)."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def save_pretrained(model: nn.Module, directory: str | os.PathLike, model_name: str | None = None) -> Path:
    """Write config.json and model.safetensors of a SequenceModel into directory (created if needed)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    pretrained_cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    name = model_name or pretrained_cfg.get("architecture")
    config = getattr(model, "config", None)
    aliases = {n for g in _tied_groups(model) for n in g[1:]}  # keep the first name of each tied group
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k not in aliases}
    meta = {
        "format": FORMAT_VERSION,
        "model_name": name,
        "config": config.to_dict() if config is not None else None,
        "pretrained_cfg": pretrained_cfg,
    }
    _atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    text = json.dumps(_jsonable(meta), indent=2, sort_keys=False) + "\n"
    _atomic_write(out / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return out


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}; expected a folder written by save_pretrained")
    meta = json.loads(path.read_text())
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a seqbackbone model config (format {FORMAT_VERSION})")
    return meta


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file (or of a folder's model.safetensors), with module. / _orig_mod. stripped."""
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS_NAME
    if p.suffix != ".safetensors":
        raise ValueError(f"weights must be a .safetensors file (pickled checkpoints are not loaded), got {p}")
    state = {}
    with safe_open(str(p), framework="pt") as f:
        for key in f.keys():
            state[strip_prefixes(key)] = f.get_tensor(key)
    return state


def strip_prefixes(key: str) -> str:
    """Drop the wrappers' prefixes: "module." (DataParallel / DDP) and "_orig_mod." (torch.compile), also nested."""
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key.replace("._orig_mod.", ".")  # a compiled submodule


def load_state_dict_into(model: nn.Module, state: dict[str, torch.Tensor], head_prefix: str = "head.") -> list[str]:
    """Load state into model. Head entries that are missing or of another shape are skipped with a warning (the
    head keeps its fresh init); any other missing, unexpected or mis-shaped key raises. Returns the skipped keys."""
    state = {strip_prefixes(k): v for k, v in state.items()}
    for group in _tied_groups(model):  # a tied weight is stored under one of its names
        present = [n for n in group if n in state]
        if present:
            for n in group:
                state.setdefault(n, state[present[0]])
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    is_head = lambda k: k.startswith(head_prefix)
    bad = [k for k in missing + unexpected + mismatched if not is_head(k)]
    if bad:
        detail = []
        if missing:
            detail.append(f"missing {[k for k in missing if not is_head(k)][:8]}")
        if unexpected:
            detail.append(f"unexpected {[k for k in unexpected if not is_head(k)][:8]}")
        if mismatched:
            detail.append(
                "shape mismatch "
                + ", ".join(f"{k}: saved {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                            for k in mismatched if not is_head(k))
            )
        raise ValueError(
            "saved weights do not fit this model (built with other sizes? pass the saved d_model / n_layer / ...): "
            + "; ".join(d for d in detail if not d.endswith("[]"))
        )
    skipped = [k for k in missing + unexpected + mismatched if is_head(k)]
    if skipped:
        warnings.warn(
            f"the head does not match the saved weights ({', '.join(skipped[:6])}): it is re-initialised, "
            "everything else is loaded",
            stacklevel=3,
        )
    keep = {k: v for k, v in state.items() if k in own and k not in mismatched}
    model.load_state_dict(keep, strict=False)
    return skipped


def from_pretrained(
    directory: str | os.PathLike,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> nn.Module:
    """Rebuild a model saved with save_pretrained and load its weights. Overrides (e.g. num_classes=5) change the
    saved config; a changed num_classes re-initialises the head only (with a warning)."""
    from .model import SequenceModel, SequenceModelConfig

    meta = read_config(directory)
    if meta.get("config") is None:
        raise ValueError(
            f"{directory} holds weights of a model without a SequenceModelConfig (custom encoder or head); build the "
            "model yourself and call seqbackbone.hub.load_weights(model, directory)"
        )
    cfg = SequenceModelConfig.from_dict({**meta["config"], **overrides})
    model = SequenceModel.from_config(cfg, name=meta.get("model_name"), device=device, dtype=dtype)
    load_weights(model, directory)
    saved_cfg = meta.get("pretrained_cfg") or {}
    for key, value in saved_cfg.items():  # keep what the saved cfg adds (e.g. a task's label names)
        model.pretrained_cfg.setdefault(key, value)
    return model


def load_weights(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Load model.safetensors of a folder (or a .safetensors file) into an existing model; see load_state_dict_into."""
    return load_state_dict_into(model, read_state_dict(path))
