"""image-classify: MNIST IDX files or an ImageFolder tree.

MNIST: a folder with `t10k-*` (and optionally `train-*`) IDX files; with only the test set, its first 8,000 images
train and the last 2,000 test. ImageFolder: `root/{class}/*.png` (or `root/train/...` + `root/test/...`).
Default model: `mamba_pixel_tiny`, the 784 pixels as one sequence; `--model vimamba_tiny_patch4_28` reads 4x4
patches with a bidirectional scan. Training shifts images by up to `shift` pixels (zero fill).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from seqbackbone.data import ImageSet, load_image_folder, load_mnist

from .base import ClassifyTask, TaskData, TaskInputError, register_task
from .batching import ListDataset, split_indices, stack_collate


def _is_idx_folder(folder: Path) -> bool:
    return any(p.name.startswith(("t10k-", "train-")) and "idx" in p.name for p in folder.iterdir())


def image_collate(items: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    """uint8 (C, H, W) images to float (B, C, H, W) in [0, 1]."""
    batch = stack_collate(items)
    batch["x"] = batch["x"].float() / 255.0
    return batch


def normalize_for(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Standardise x (B, C, H, W) in [0, 1] with the model's pretrained_cfg mean and std (if it has them)."""
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "mean" not in cfg or "std" not in cfg:
        return x
    mean = torch.tensor(cfg["mean"], device=x.device, dtype=x.dtype)[None, :, None, None]
    std = torch.tensor(cfg["std"], device=x.device, dtype=x.dtype)[None, :, None, None]
    return (x - mean) / std


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image of x (B, C, H, W) by up to max_shift pixels in each direction, filling with the
    background (0, black)."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator).tolist()
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


@register_task
class ImageClassify(ClassifyTask):
    name = "image-classify"
    description = "image classification: MNIST IDX files (784-pixel sequence or patches) or an ImageFolder"
    defaults: dict[str, Any] = {
        "model": "mamba_pixel_tiny",
        "model_kwargs": {},
        "epochs": 30,
        "batch_size": 64,
        "lr": 2e-3,
        "weight_decay": 0.05,
        "shift": 2,  # random translation in pixels while training
        "n_train_from_test": 8000,
        "image_mode": "L",  # PIL mode for ImageFolder images: L (grey) or RGB
    }

    def load_data(self, cfg: dict[str, Any]) -> TaskData:
        folder = Path(cfg["data"])
        if not folder.is_dir():
            raise TaskInputError(f"data folder {folder} does not exist")
        try:
            if _is_idx_folder(folder):
                train, test = load_mnist(folder, int(cfg.get("n_train_from_test", 8000)))
            else:
                train, test = load_image_folder(folder, mode=str(cfg.get("image_mode", "L")))
        except ValueError as err:
            raise TaskInputError(str(err)) from None
        if len(test.labels) == 0:
            raise TaskInputError(f"{folder} yields no test images")
        keep, held = split_indices(len(train.labels), float(cfg.get("val_fraction", 0.1)), int(cfg.get("seed", 0)))

        def subset(s: ImageSet, idx: list[int]) -> ListDataset:
            return ListDataset(s.images[idx], s.labels[idx].tolist())

        info = {"labels": train.classes, "image_size": list(train.images.shape[1:]),
                "n_train": len(keep), "n_val": len(held), "n_test": len(test.labels)}
        return TaskData(subset(train, keep), subset(train, held) if held else None,
                        subset(test, list(range(len(test.labels)))), image_collate, info=info)

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(normalize_for(model, batch["x"]))

    def augment(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {**batch, "x": random_shift(batch["x"], int(self.cfg.get("shift", 2)), generator)}
