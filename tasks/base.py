"""What a task is (data + model + loss + metric + defaults) and the registry the command line looks tasks up in.

A task subclasses `Task`, sets its class attributes and is registered with `@register_task`. The shared loop
(`seqbackbone.tasks.train`) calls, in order: `load_data(cfg)`, `build_model(cfg, data)`, then `train_loss(...)` per
step and `evaluate(...)` per evaluation, and `extra_results(...)` once at the end.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .batching import BatchPlan


class TaskInputError(ValueError):
    """Bad input from the user (missing data, wrong columns, unknown names): the CLI prints it and exits with 2."""


@dataclass
class TaskData:
    """What `Task.load_data` returns. `info` is stored in the run's config.json (label names, num_classes, ...)
    and handed back to `load_data` on `eval`, so labels map to the same ids."""

    train: Dataset
    val: Dataset | None
    test: Dataset
    collate: Callable[[list], dict[str, torch.Tensor]]
    train_lengths: list[int] | None = None
    eval_lengths: Callable[[Dataset], list[int] | None] = lambda ds: None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalContext:
    """How to run a model over an evaluation set."""

    device: torch.device
    batch_size: int
    collate: Callable[[list], dict[str, torch.Tensor]]
    num_workers: int = 0
    autocast: Callable[[], AbstractContextManager] = nullcontext
    lengths: Callable[[Dataset], list[int] | None] = lambda ds: None

    def batches(self, dataset: Dataset):
        """Batches of `dataset` on the device, longest first when lengths are known (less padding)."""
        plan = BatchPlan(len(dataset), self.batch_size, shuffle=False, lengths=self.lengths(dataset))
        loader = DataLoader(
            dataset, batch_sampler=plan.batches(0), collate_fn=self.collate, num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(0),  # leaves the global RNG alone
        )
        for batch in loader:
            yield to_device(batch, self.device)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class Task:
    """A training recipe. Subclasses set the class attributes and implement `load_data`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    metric: ClassVar[str] = "accuracy"  # reported as val_<metric> / test_<metric>
    greater_is_better: ClassVar[bool] = True
    needs_data: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self) -> None:
        self.cfg: dict[str, Any] = {}  # the run's settings; the loop sets them before load_data

    def load_data(self, cfg: dict[str, Any]) -> TaskData:
        raise NotImplementedError

    def model_overrides(self, cfg: dict[str, Any], data: TaskData) -> dict[str, Any]:
        """Keyword overrides for `create_model` that the data decides (e.g. num_classes)."""
        return {}

    def build_model(self, cfg: dict[str, Any], data: TaskData) -> nn.Module:
        import seqbackbone

        kwargs = {**self.model_overrides(cfg, data), **(cfg.get("model_kwargs") or {})}
        return seqbackbone.create_model(cfg["model"], **kwargs)

    def load_model(self, path: str) -> nn.Module:
        import seqbackbone

        return seqbackbone.from_pretrained(path)

    def train_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Dataset, ctx: EvalContext) -> dict[str, float]:
        raise NotImplementedError

    def extra_results(self, cfg: dict[str, Any], data: TaskData) -> dict[str, Any]:
        """Results computed once at the end of a run besides the model's (e.g. a baseline)."""
        return {}


class ClassifyTask(Task):
    """Sequence or image classification with cross-entropy and accuracy. Subclasses may override `augment`
    (training only) and `predict` (evaluation only, e.g. averaging over reverse complements)."""

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (B, num_classes)."""
        if "mask" in batch:
            return model(batch["x"], mask=batch["mask"])
        return model(batch["x"])

    def augment(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        return batch

    def predict(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.forward(model, batch)

    def model_overrides(self, cfg: dict[str, Any], data: TaskData) -> dict[str, Any]:
        return {"num_classes": len(data.info["labels"])}

    def train_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        batch = self.augment(batch, generator)
        smoothing = float(self.cfg.get("label_smoothing") or 0.0)
        return F.cross_entropy(self.forward(model, batch).float(), batch["y"], label_smoothing=smoothing)

    @torch.no_grad()
    def class_probs(self, model: nn.Module, dataset: Dataset, ctx: EvalContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Class probabilities (n, num_classes) fp32 and labels (n,) long of every item, on the CPU, in the order of
        ctx.batches (fixed by the items' lengths, so the same for every model evaluated on the same data)."""
        probs, labels = [], []
        for batch in ctx.batches(dataset):
            with ctx.autocast():
                logits = self.predict(model, batch)
            probs.append(logits.float().softmax(-1).cpu())
            labels.append(batch["y"].cpu())
        return torch.cat(probs), torch.cat(labels)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Dataset, ctx: EvalContext) -> dict[str, float]:
        loss_sum, correct, count = 0.0, 0, 0
        for batch in ctx.batches(dataset):
            with ctx.autocast():
                logits = self.predict(model, batch)
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, batch["y"], reduction="sum").item()
            correct += int((logits.argmax(-1) == batch["y"]).sum())
            count += int(batch["y"].numel())
        return {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1)}


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make a task available to `seqbackbone train NAME`."""
    if not cls.name:
        raise ValueError(f"task class {cls.__name__} has no name")
    TASKS[cls.name] = cls
    return cls


def _load_builtin_tasks() -> None:
    from . import dna_classify, dna_motifs, genome_lm, image_classify, spoken_digits, waveform_lm  # noqa: F401


def list_tasks() -> list[str]:
    _load_builtin_tasks()
    return sorted(TASKS)


def get_task(name: str) -> Task:
    """The registered task `name`; an unknown name raises TaskInputError naming the closest matches."""
    _load_builtin_tasks()
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known tasks: {', '.join(sorted(TASKS))}"
        raise TaskInputError(f"unknown task {name!r}{hint}")
    return TASKS[name]()


def is_better(value: float, best: float | None, greater_is_better: bool) -> bool:
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return True
    return value > best if greater_is_better else value < best
