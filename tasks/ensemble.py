"""Ensembles of finished classification runs: `seqbackbone eval RUN_DIR RUN_DIR ...` averages the class probabilities
of the runs' best models (e.g. the same recipe trained with several seeds) on one test set.

Runs of one task with the same labels only; they are tested on their common data folder, or on `--data`'s.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from .base import ClassifyTask, TaskInputError, get_task
from .train import load_for_eval, load_run_config


def check_members(run_dirs: list[str], data_path: str | None) -> None:
    """Refuses, before loading any model, runs that cannot be averaged: other tasks or a task that is not
    classification, other labels, or (without `data_path`) other data."""
    configs = [load_run_config(d) for d in run_dirs]
    tasks = {c["task"] for c in configs}
    if len(tasks) > 1:
        raise TaskInputError(f"an ensemble needs runs of one task, got {sorted(tasks)}")
    task = get_task(tasks.pop())
    if not isinstance(task, ClassifyTask):
        raise TaskInputError(f"an ensemble averages class probabilities: {task.name} is not a classification task")
    labels = {tuple((c.get("task_info") or {}).get("labels") or ()) for c in configs}
    if len(labels) > 1:
        raise TaskInputError(f"an ensemble needs runs with the same labels, got {sorted(labels)}")
    folders = {str(Path(c["data"]).resolve()) if c.get("data") else "" for c in configs}
    if data_path is None and len(folders) > 1:
        raise TaskInputError(f"the runs were trained on different data ({', '.join(sorted(folders))}); pass --data "
                             "to test them all on one set")


def evaluate_ensemble(run_dirs: list[str], data_path: str | None = None, device: str = "auto") -> dict[str, Any]:
    """Test accuracy and loss (mean negative log-likelihood) of the mean of the runs' class probabilities, and each
    run's own: {"test_accuracy", "test_loss", "members": n, "runs": {run_dir: {"test_accuracy", "test_loss"}}}."""
    if len(run_dirs) < 2:
        raise TaskInputError(f"an ensemble needs at least two run directories, got {len(run_dirs)}")
    check_members(run_dirs, data_path)
    total, labels, runs = None, None, {}
    for run_dir in run_dirs:
        task, data, model, ctx = load_for_eval(run_dir, data_path, device)
        probs, y = task.class_probs(model, data.test, ctx)
        if labels is not None and not torch.equal(y, labels):
            raise TaskInputError(f"{run_dir} sees other test items than {run_dirs[0]}")
        labels = y
        total = probs if total is None else total + probs
        runs[run_dir] = _scores(probs, y)
        del model
    return {**_scores(total / len(run_dirs), labels), "members": len(run_dirs), "runs": runs}


def _scores(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy and mean negative log-likelihood of probabilities (n, C) against labels (n,)."""
    if labels.numel() == 0:
        return {"test_accuracy": math.nan, "test_loss": math.nan}
    picked = probs.gather(1, labels[:, None]).squeeze(1).clamp_min(1e-12)
    return {"test_accuracy": float((probs.argmax(-1) == labels).float().mean()),
            "test_loss": float(-picked.log().mean())}
