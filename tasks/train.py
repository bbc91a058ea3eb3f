"""The shared training loop: one function, `train(cfg)`, runs any registered task.

A run directory holds config.json (the resolved settings), metrics.csv + curves.png (one row / point per
evaluation), model/ (the best model so far by the validation metric, in save_pretrained layout), last.ckpt (everything
needed to resume exactly) and, at the end, results.json (test metrics of the best model). With `ema_decay` set, an
exponential moving average of the weights is what gets validated, saved to model/ and tested; last.ckpt holds both.

Settings, lowest priority first: COMMON_DEFAULTS, the task's `defaults`, a JSON config file, command-line flags.
Distributed data parallel runs start through torchrun (`torchrun --nproc_per_node N -m seqbackbone train ...`): each
process trains on its shard of every epoch, rank 0 evaluates, logs and writes files.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from .base import EvalContext, Task, TaskData, TaskInputError, get_task, is_better, to_device
from .batching import BatchPlan
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .ema import WeightEMA
from .metrics import MetricsLog

COMMON_DEFAULTS: dict[str, Any] = {
    "data": None,
    "model": None,
    "model_kwargs": {},
    "out": None,
    "epochs": 10,
    "max_steps": None,  # when set, the run lasts exactly this many steps (epochs is then ignored)
    "batch_size": 32,
    "eval_batch_size": None,  # default: 2 x batch_size
    "lr": 1e-3,
    "weight_decay": 0.05,
    "betas": [0.9, 0.95],
    "warmup_frac": 0.05,  # warmup steps as a fraction of all steps, unless warmup_steps is set
    "warmup_steps": None,
    "min_lr_ratio": 0.05,  # the cosine ends at lr * min_lr_ratio
    "grad_clip": 1.0,
    "ema_decay": 0.0,  # > 0 (e.g. 0.999): validate, save and test a moving average of the weights (tasks/ema.py)
    "label_smoothing": 0.0,  # classification tasks: cross entropy against (1 - s) one-hot + s uniform
    "eval_every": None,  # steps between evaluations; default once per epoch
    "val_fraction": 0.1,  # part of the training data held out to pick the best model
    "time_limit": None,  # minutes: stop training cleanly after this long, then evaluate
    "device": "auto",
    "amp": True,  # bf16 autocast on CUDA
    "seed": 0,
    "deterministic": False,
    "num_workers": 0,
    "threads": None,  # torch's CPU threads in this process; default: torch's own (OMP_NUM_THREADS, else all cores)
    "progress": True,
}
# Settings a resumed run may change without breaking exactness.
RUNTIME_KEYS = ("device", "num_workers", "time_limit", "progress", "threads")


class NonFiniteLoss(RuntimeError):
    """The loss or gradient norm became inf or nan; the run stopped and kept its last good checkpoint."""


# --------------------------------------------------------------------------- settings


def resolve_config(task: Task, file_cfg: dict[str, Any] | None, flags: dict[str, Any]) -> dict[str, Any]:
    """Merge COMMON_DEFAULTS < task.defaults < file_cfg < flags (flags with value None are ignored)."""
    cfg = {**COMMON_DEFAULTS, **task.defaults}
    for source in (file_cfg or {}, {k: v for k, v in flags.items() if v is not None}):
        for key, value in source.items():
            if key == "model_kwargs":
                cfg["model_kwargs"] = {**cfg.get("model_kwargs", {}), **value}
            else:
                cfg[key] = value
    cfg["task"] = task.name
    if cfg["model"] is None:
        raise TaskInputError(f"task {task.name} has no default model; pass --model NAME")
    if task.needs_data and not cfg["data"]:
        raise TaskInputError(f"task {task.name} needs --data PATH")
    for key in ("epochs", "batch_size"):
        if int(cfg[key]) <= 0:
            raise TaskInputError(f"--{key.replace('_', '-')} must be positive, got {cfg[key]}")
    if cfg["max_steps"] is not None and int(cfg["max_steps"]) <= 0:
        raise TaskInputError(f"--max-steps must be positive, got {cfg['max_steps']}")
    if float(cfg["lr"]) <= 0:
        raise TaskInputError(f"--lr must be positive, got {cfg['lr']}")
    for key in ("label_smoothing", "ema_decay"):
        try:
            value = float(cfg.get(key) or 0.0)
        except (TypeError, ValueError):
            value = math.nan
        if not 0.0 <= value < 1.0:
            raise TaskInputError(f"{key} must lie in [0, 1), got {cfg[key]!r}")
    if cfg.get("threads") is not None and int(cfg["threads"]) <= 0:
        raise TaskInputError(f"--threads must be positive, got {cfg['threads']}")
    if cfg["out"] is None:
        cfg["out"] = str(Path("runs") / f"{task.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    return cfg


def pick_device(choice: str, local_rank: int = 0) -> torch.device:
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TaskInputError("--device cuda was asked for but no CUDA GPU is available")
        return torch.device("cuda", local_rank) if choice == "cuda" else torch.device(choice)
    if choice != "cpu":
        raise TaskInputError(f"--device must be cpu, cuda or auto, got {choice!r}")
    return torch.device("cpu")


def seed_everything(seed: int, deterministic: bool) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


# --------------------------------------------------------------------------- optimiser and schedule


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no decay for the model's `no_weight_decay()` names (A_log, D, embeddings it lists), biases and
    all 1-D parameters (norm weights); decay for the rest."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name in skip or p.ndim <= 1 or name.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float):
    """lr multiplier at step s: linear warmup from 1/warmup to 1, then cosine down to `min_ratio` at the end."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


# --------------------------------------------------------------------------- distributed helpers


def setup_distributed(device_choice: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device). Under torchrun (WORLD_SIZE > 1) joins the process group: NCCL on GPUs, gloo
    on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, pick_device(device_choice)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_choice, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # Rank 0 evaluates alone while the others wait in a barrier: allow long evaluations.
        dist.init_process_group(backend, timeout=timedelta(minutes=60))
    return rank, world, device


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# --------------------------------------------------------------------------- files of a run


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def save_model_dir(model: nn.Module, path: Path) -> None:
    """save_pretrained into `path`, replacing an older copy only once the new one is complete."""
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp))
    old = path.with_name(path.name + ".old")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old)


def load_run_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise TaskInputError(f"{run_dir} is not a run directory (no config.json)")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- the loop


def train(cfg: dict[str, Any], halt_after_step: int | None = None) -> dict[str, Any]:
    """Run a task's training as `cfg` says (see COMMON_DEFAULTS; `cfg["task"]` names the task). With
    `cfg["resume"]` set to a run directory, continue that run from its last.ckpt with its own settings.

    `halt_after_step` stops the run right after the evaluation + checkpoint at that step, without a final test
    (as if the process had been killed there). Returns the results dict (empty on ranks other than 0).
    """
    t_start = t_first = time.monotonic()  # t_start moves back by the time a resumed run had already spent
    resume_dir = cfg.get("resume")
    if resume_dir:
        saved = load_run_config(resume_dir)
        if cfg.get("task") not in (None, saved["task"]):
            raise TaskInputError(f"--resume {resume_dir} is a {saved['task']} run, not {cfg['task']}")
        for key in RUNTIME_KEYS:
            if cfg.get(key) is not None:
                saved[key] = cfg[key]
        cfg = {**saved, "out": str(resume_dir), "resume": str(resume_dir)}
        if not (Path(resume_dir) / "last.ckpt").is_file():
            raise TaskInputError(f"{resume_dir} has no last.ckpt to resume from")

    task = get_task(cfg["task"])
    if cfg.get("threads"):  # e.g. two runs side by side on a small CPU: one thread each instead of two teams
        torch.set_num_threads(int(cfg["threads"]))
    rank, world, device = setup_distributed(cfg["device"])
    main = rank == 0
    seed = int(cfg["seed"])
    seed_everything(seed + rank, bool(cfg["deterministic"]))
    out = Path(cfg["out"])
    if main:
        out.mkdir(parents=True, exist_ok=True)

    task.cfg = cfg
    data = task.load_data(cfg)
    cfg["task_info"] = data.info
    model = task.build_model(cfg, data).to(device)
    raw_model = model
    n_params = sum(p.numel() for p in model.parameters())
    # Every process keeps the average (the same on each), from the unwrapped model; rank 0 evaluates it.
    ema_decay = float(cfg.get("ema_decay") or 0.0)  # runs saved before the setting existed lack it
    ema = WeightEMA(raw_model, ema_decay) if ema_decay > 0 else None
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(cfg.get("find_unused_parameters", False)),
        )

    batch_size = int(cfg["batch_size"])
    plan = BatchPlan(
        len(data.train), batch_size, shuffle=True, seed=seed, lengths=data.train_lengths, drop_last=True,
        rank=rank, world_size=world,
    )
    steps_per_epoch = len(plan)
    total_steps = int(cfg["max_steps"]) if cfg["max_steps"] else int(cfg["epochs"]) * steps_per_epoch
    eval_every = int(cfg["eval_every"] or steps_per_epoch)
    warmup = int(cfg["warmup_steps"]) if cfg["warmup_steps"] is not None else int(cfg["warmup_frac"] * total_steps)
    cfg.update(total_steps=total_steps, steps_per_epoch=steps_per_epoch, world_size=world, n_params=n_params)

    optimizer = torch.optim.AdamW(
        param_groups(raw_model, float(cfg["weight_decay"])), lr=float(cfg["lr"]), betas=tuple(cfg["betas"]),
        fused=device.type == "cuda",
    )
    # With a time limit the schedule follows whichever is further along, the steps or the clock, so a run cut short
    # by the limit has still annealed its learning rate (and is no longer bit-for-bit repeatable).
    time_limit = float(cfg["time_limit"]) * 60 if cfg.get("time_limit") else None
    clock = {"fraction": 0.0}
    factor = warmup_cosine(total_steps, max(1, warmup), float(cfg["min_lr_ratio"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: factor(max(s, clock["fraction"] * total_steps)) if time_limit else factor(s)
    )
    aug_gen = torch.Generator().manual_seed(seed * 1000 + rank + 1)
    use_amp = device.type == "cuda" and bool(cfg["amp"])
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext
    ctx = EvalContext(
        device, int(cfg["eval_batch_size"] or 2 * batch_size), data.collate, int(cfg["num_workers"]), autocast,
        data.eval_lengths,
    )
    log = MetricsLog(out, task.metric) if main else None

    step, epoch, pos = 0, 0, 0
    best: dict[str, Any] = {"value": None, "step": None}
    loss_acc = [0.0, 0]  # summed loss and steps since the last evaluation
    last_ckpt_step: int | None = None
    if resume_dir:
        ck = load_checkpoint(out / "last.ckpt")
        raw_model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        if ema is not None:
            ema.load_state_dict(ck["ema"])
        step, epoch, pos = ck["step"], ck["epoch"], ck["pos"]
        best, loss_acc = ck["best"], ck["loss_acc"]
        t_start -= float(ck.get("elapsed_s", 0.0))  # elapsed_s in metrics.csv counts the earlier part too
        rngs = ck["rng"]
        if len(rngs) == world:
            set_rng_state(rngs[rank])
            aug_gen.set_state(ck["aug_gen"][rank])
        elif main:
            print(f"note: resuming on {world} processes a run saved on {len(rngs)}: random streams restart",
                  file=sys.stderr)
        last_ckpt_step = step
        if main:
            log.truncate(step)
    if main:
        write_json(out / "config.json", {k: v for k, v in cfg.items() if k != "resume"})
        print(f"{task.name}: {cfg['model']} ({n_params / 1e6:.3g}M parameters) on {device}"
              f"{f' x {world} processes' if world > 1 else ''}, {len(data.train)} training items, "
              f"{steps_per_epoch} steps per epoch, {total_steps} steps, run dir {out}", flush=True)

    def checkpoint() -> None:
        nonlocal last_ckpt_step
        rngs, gens = [rng_state()], [aug_gen.get_state()]
        if world > 1:
            all_rngs, all_gens = [None] * world, [None] * world
            dist.all_gather_object(all_rngs, rngs[0])
            dist.all_gather_object(all_gens, gens[0])
            rngs, gens = all_rngs, all_gens
        if main:
            save_checkpoint(out / "last.ckpt", {
                "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step, "epoch": epoch, "pos": pos, "best": best,
                "loss_acc": loss_acc, "rng": rngs, "aug_gen": gens, "world_size": world,
                "elapsed_s": time.monotonic() - t_start,
                **({"ema": ema.state_dict()} if ema is not None else {}),
            })
        last_ckpt_step = step

    def evaluate_and_save() -> None:
        nonlocal loss_acc
        if main:
            # With EMA on, the averaged weights are validated and saved; the trained ones come back afterwards.
            with ema.swapped_in(raw_model) if ema is not None else nullcontext():
                raw_model.eval()
                val = task.evaluate(raw_model, data.val, ctx) if data.val is not None else {}
                raw_model.train()
                row = {"step": step, "epoch": round(step / steps_per_epoch, 3), "lr": scheduler.get_last_lr()[0],
                       "train_loss": loss_acc[0] / max(1, loss_acc[1]), **{f"val_{k}": v for k, v in val.items()},
                       "elapsed_s": round(time.monotonic() - t_start, 1)}
                log.append(row)
                shown = " ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float) and k != "lr")
                _write(f"step {step}/{total_steps} {shown}")
                value = val.get(task.metric)
                # Ties on the metric go to the lower validation loss (a later checkpoint often ties at 100%).
                loss = val.get("loss", math.inf)
                tie = value is not None and value == best["value"] and loss < best.get("loss", math.inf)
                if value is None or tie or is_better(value, best["value"], task.greater_is_better):
                    best.update(value=value, step=step, loss=loss)
                    save_model_dir(raw_model, out / "model")
        loss_acc = [0.0, 0]
        checkpoint()
        barrier(world)

    progress = _progress(total_steps, step, main and bool(cfg["progress"]))
    t_invocation = t_first
    stopped_early = False
    model.train()
    while step < total_steps and not stopped_early:
        if hasattr(data.train, "set_epoch"):
            data.train.set_epoch(epoch)
        batches = plan.batches(epoch)[pos:]
        # A generator of its own: a DataLoader otherwise draws its workers' base seed from the global RNG, and a
        # resumed run (which builds one more loader) would drift from an uninterrupted one.
        loader = DataLoader(data.train, batch_sampler=batches, collate_fn=data.collate,
                            num_workers=int(cfg["num_workers"]), pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        for batch in loader:
            batch = to_device(batch, device)
            with autocast():
                loss = task.train_loss(model, batch, aug_gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(raw_model.parameters(), float(cfg["grad_clip"]))
            time_up = time_limit is not None and time.monotonic() - t_invocation > time_limit
            # One number per process: loss, grad norm and the stop flag, agreed across processes.
            status = torch.stack([loss.detach().float(), grad_norm.detach().float().to(loss.device),
                                  torch.tensor(float(time_up), device=loss.device)])
            if world > 1:
                dist.all_reduce(status)
                status[0] /= world
            loss_value, norm_value, time_up = status.tolist()
            if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
                progress.close()
                kept = (f"the last good checkpoint (step {last_ckpt_step}) is kept in {out / 'last.ckpt'}"
                        if last_ckpt_step is not None else "no checkpoint had been written yet")
                raise NonFiniteLoss(
                    f"stopping: the training loss is {loss_value} (gradient norm {norm_value}) at step {step + 1}, "
                    f"epoch {epoch}; {kept}. Try a lower --lr."
                )
            optimizer.step()
            if ema is not None:
                ema.update(raw_model)
            if time_limit:
                clock["fraction"] = (time.monotonic() - t_invocation) / time_limit
            scheduler.step()
            step, pos = step + 1, pos + 1
            loss_acc = [loss_acc[0] + loss_value, loss_acc[1] + 1]
            progress.update(1)
            progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", refresh=False)
            stopped_early = bool(time_up) and step < total_steps
            if step % eval_every == 0 or step == total_steps or stopped_early:
                evaluate_and_save()
                if halt_after_step is not None and step >= halt_after_step:
                    progress.close()
                    return {"halted_at_step": step}
            if step >= total_steps or stopped_early:
                break
        else:
            epoch, pos = epoch + 1, 0
    progress.close()
    if stopped_early and main:
        _write(f"time limit of {cfg['time_limit']} minutes reached at step {step}/{total_steps}; evaluating")

    results: dict[str, Any] = {}
    if main:
        results = finish_run(task, cfg, data, ctx, out, best, step, time.monotonic() - t_start, stopped_early)
    barrier(world)
    if world > 1:
        dist.destroy_process_group()
    return results


def finish_run(task: Task, cfg: dict[str, Any], data: TaskData, ctx: EvalContext, out: Path, best: dict[str, Any],
               step: int, seconds: float, stopped_early: bool) -> dict[str, Any]:
    """Test the best saved model, add the task's extra results, write results.json and print them."""
    model = task.load_model(str(out / "model")).to(ctx.device)
    model.eval()
    test = task.evaluate(model, data.test, ctx)
    results: dict[str, Any] = {f"test_{k}": v for k, v in test.items()}
    results.update(task.extra_results(cfg, data))
    results.update(best_step=best["step"], steps=step, train_seconds=round(seconds, 1), stopped_early=stopped_early)
    if best["value"] is not None:
        results[f"val_{task.metric}"] = best["value"]
    write_json(out / "results.json", results)
    shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in results.items())
    _write(f"results ({out / 'results.json'}): {shown}")
    return results


def load_for_eval(run_dir: str | Path, data_path: str | None = None,
                  device: str = "auto") -> tuple[Task, TaskData, nn.Module, EvalContext]:
    """A finished run's task (with the run's settings), data (its own, or `data_path`'s), best model (model/, in eval
    mode on the device) and evaluation context."""
    cfg = load_run_config(run_dir)
    if data_path is not None:
        cfg["data"] = data_path
    cfg["evaluation_only"] = True
    task = get_task(cfg["task"])
    dev = pick_device(device)
    model_dir = Path(run_dir) / "model"
    if not model_dir.is_dir():
        raise TaskInputError(f"{run_dir} has no model/ folder (did the run evaluate at least once?)")
    task.cfg = cfg
    data = task.load_data(cfg)
    model = task.load_model(str(model_dir)).to(dev)
    model.eval()
    use_amp = dev.type == "cuda" and bool(cfg.get("amp", True))
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext
    bs = int(cfg.get("eval_batch_size") or 2 * int(cfg["batch_size"]))
    return task, data, model, EvalContext(dev, bs, data.collate, 0, autocast, data.eval_lengths)


def evaluate_run(run_dir: str | Path, data_path: str | None = None, device: str = "auto") -> dict[str, float]:
    """Test metrics of a finished run's best model (model/), on its own test data or on `data_path`'s."""
    task, data, model, ctx = load_for_eval(run_dir, data_path, device)
    return {f"test_{k}": v for k, v in task.evaluate(model, data.test, ctx).items()}


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, unit="step",
                mininterval=0.5 if interactive else 30.0, leave=False)


def _write(line: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()
