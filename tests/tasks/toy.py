"""A task and model small enough to train in milliseconds, for testing the loop itself.

The model has dropout (global RNG) and the task a random augmentation (the loop's generator), so exact resume is
only possible when both random streams are restored.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from seqbackbone.tasks.base import ClassifyTask, TaskData
from seqbackbone.tasks.batching import ListDataset, stack_collate
from torch import nn


class ToyModel(nn.Module):
    def __init__(self, dim: int = 8, hidden: int = 16, num_classes: int = 2) -> None:
        super().__init__()
        self.dims = (dim, hidden, num_classes)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def no_weight_decay(self) -> set[str]:
        return {"net.3.weight"}

    def save_pretrained(self, directory: str) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "config.json").write_text(json.dumps(self.dims))
        torch.save(self.state_dict(), Path(directory) / "weights.pt")

    @classmethod
    def load(cls, directory: str) -> ToyModel:
        model = cls(*json.loads((Path(directory) / "config.json").read_text()))
        model.load_state_dict(torch.load(Path(directory) / "weights.pt", weights_only=True))
        return model


class ToyTask(ClassifyTask):
    """Is the sum of 8 Gaussian numbers positive? `nan_at_call` makes the n-th training loss nan."""

    name = "toy"
    description = "test task"
    needs_data = False
    defaults: dict[str, Any] = {"model": "toy", "n_train": 64, "epochs": 2, "batch_size": 8, "lr": 1e-2,
                                "nan_at_call": None, "noise": 0.1}

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def load_data(self, cfg: dict[str, Any]) -> TaskData:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(int(cfg["n_train"]) + 64, 8, generator=g)
        y = (x.sum(1) > 0).long().tolist()
        n = int(cfg["n_train"])
        return TaskData(ListDataset(x[:n], y[:n]), ListDataset(x[n : n + 32], y[n : n + 32]),
                        ListDataset(x[n + 32 :], y[n + 32 :]), stack_collate, info={"labels": ["no", "yes"]})

    def build_model(self, cfg: dict[str, Any], data: TaskData) -> nn.Module:
        return ToyModel()

    def load_model(self, path: str) -> nn.Module:
        return ToyModel.load(path)

    def augment(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        noise = torch.randn(batch["x"].shape, generator=generator) * float(self.cfg["noise"])
        return {**batch, "x": batch["x"] + noise}

    def train_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        self.calls += 1
        loss = super().train_loss(model, batch, generator)
        if self.cfg.get("nan_at_call") and self.calls >= int(self.cfg["nan_at_call"]):
            loss = loss * math.nan
        return loss
