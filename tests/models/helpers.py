"""Small models and inputs for the contract tests: every registered name, shrunk by overrides so CI stays fast."""

from __future__ import annotations

import random

import torch

import seqbackbone as sb

SMALL = {"n_layer": 1, "d_model": 32, "d_state": 4}


def small_overrides(name: str) -> dict:
    kw = dict(SMALL)
    if name.endswith("_224"):
        kw["img_size"] = 32  # 2 x 2 patches of 16
    if name.startswith("mamba_pixel"):
        kw["img_size"] = 6  # 36 pixel tokens instead of 784
    return kw


def small_model(name: str, **extra) -> sb.SequenceModel:
    torch.manual_seed(0)
    return sb.create_model(name, **{**small_overrides(name), **extra}).eval()


def random_dna(n: int, rng: random.Random) -> str:
    return "".join(rng.choice("ACGTN") for _ in range(n))


def make_input(model: sb.SequenceModel, lengths: tuple[int, ...] = (23, 15), seed: int = 0):
    """(x, mask) of the model's modality; rows have the given lengths (right-padded) where lengths apply."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.pretrained_cfg
    modality = cfg["modality"]
    if modality == "dna":
        rng = random.Random(seed)
        return sb.DnaTokenizer().batch_encode([random_dna(n, rng) for n in lengths])
    if modality == "image":
        C, H, W = cfg["input_size"]
        return torch.randn(len(lengths), C, H, W, generator=g), None
    if modality == "audio":
        T = [n * 13 for n in lengths]  # samples; not multiples of the frame size
    else:
        T = list(lengths)
    L = max(T)
    mask = torch.arange(L)[None, :] < torch.tensor(T)[:, None]
    if modality == "audio":
        x = (torch.rand(len(T), L, generator=g) * 2 - 1) * 0.8
    else:
        x = torch.randn(len(T), L, cfg["input_size"][1], generator=g)
    return x * (mask if x.ndim == 2 else mask[..., None]), mask
