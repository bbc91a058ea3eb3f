"""The `seqbackbone` command (also `python -m seqbackbone`).

    seqbackbone train TASK [--data PATH] [--model NAME] [--out RUN_DIR] [--epochs N] [--max-steps N] ...
    seqbackbone eval RUN_DIR [RUN_DIR ...] [--data PATH]
    seqbackbone generate RUN_DIR --length L [--num N] [--prompt ...] --out PATH   (language models)
    seqbackbone list-tasks
    seqbackbone list-models [PATTERN]

Bad input (missing data, wrong CSV columns, unknown names) prints one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any

from .base import TaskInputError, get_task, list_tasks

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not the whole usage text
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="seqbackbone", description="Mamba backbones for audio, DNA and images: train and evaluate.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a task", description="Train TASK; see `seqbackbone list-tasks`.")
    t.add_argument("task", help="task name, e.g. dna-motifs")
    t.add_argument("--data", help="data file or folder (the task says which)")
    t.add_argument("--model", help="registered model name (see list-models)")
    t.add_argument("--out", help="run directory (default runs/TASK-TIME)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--max-steps", type=int, help="train exactly this many steps (overrides --epochs)")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--device", choices=["cpu", "cuda", "auto"])
    t.add_argument("--seed", type=int)
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.ckpt")
    t.add_argument("--config", metavar="FILE", help="JSON file of settings (flags override it)")
    t.add_argument("--deterministic", action="store_true", default=None, help="deterministic algorithms only")
    t.add_argument("--num-workers", type=int, help="data-loading worker processes")
    t.add_argument("--threads", type=int, help="CPU threads for torch in this run (default: torch's own choice)")
    t.add_argument("--time-limit", type=float, metavar="MINUTES", help="stop training after this long, then test")
    t.add_argument("--eval-every", type=int, metavar="STEPS", help="steps between evaluations (default: an epoch)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other setting, VALUE read as JSON when it parses (e.g. --set seq_len=2048)")
    t.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")

    e = sub.add_parser("eval", help="test a finished run's best model, or an ensemble of runs",
                       description="Evaluate RUN_DIR/model; with several run directories (one classification task, "
                                   "e.g. several seeds), also the mean of their class probabilities.")
    e.add_argument("run_dir", nargs="+")
    e.add_argument("--data", help="other data to test on (same format as the run's)")
    e.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")

    from .generate import add_parser as add_generate_parser

    add_generate_parser(sub)
    sub.add_parser("list-tasks", help="the tasks `train` knows")
    m = sub.add_parser("list-models", help="registered models with their parameter counts")
    m.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'mamba_dna*'")
    return parser


def _parse_set(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise TaskInputError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip().replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip().replace("-", "_")] = raw
    return out


def _read_config(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise TaskInputError(f"config file {path} does not exist")
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise TaskInputError(f"config file {path} is not valid JSON: {err}") from None
    if not isinstance(cfg, dict):
        raise TaskInputError(f"config file {path} must hold a JSON object, got {type(cfg).__name__}")
    return cfg


def check_settings(task, cfg: dict[str, Any]) -> None:
    """Reject setting names neither the loop nor the task knows (typos would otherwise be ignored)."""
    from .train import COMMON_DEFAULTS

    known = set(COMMON_DEFAULTS) | set(task.defaults) | {"task", "resume"}
    for key in cfg:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise TaskInputError(f"unknown setting {key!r} for task {task.name}{hint}")


def check_model_name(name: str) -> None:
    import seqbackbone

    names = seqbackbone.list_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `seqbackbone list-models`"
        raise TaskInputError(f"unknown model {name!r}{hint}")


def cmd_train(args: argparse.Namespace) -> int:
    from .train import NonFiniteLoss, resolve_config, train

    flags = {
        "data": args.data, "model": args.model, "out": args.out, "epochs": args.epochs, "max_steps": args.max_steps,
        "batch_size": args.batch_size, "lr": args.lr, "device": args.device, "seed": args.seed,
        "deterministic": args.deterministic, "num_workers": args.num_workers, "time_limit": args.time_limit,
        "threads": args.threads,
        "eval_every": args.eval_every, "progress": args.progress, **_parse_set(args.set),
    }
    task = get_task(args.task)
    if args.resume:
        cfg = {"task": task.name, "resume": args.resume,
               **{k: flags[k] for k in ("device", "num_workers", "time_limit", "progress", "threads")}}
    else:
        file_cfg = _read_config(args.config) if args.config else {}
        check_settings(task, {**file_cfg, **{k: v for k, v in flags.items() if v is not None}})
        cfg = resolve_config(task, file_cfg, flags)
        if type(task).build_model is _base_build_model():
            check_model_name(cfg["model"])
        if task.needs_data and not Path(cfg["data"]).exists():
            raise TaskInputError(f"data path {cfg['data']} does not exist")
    try:
        train(cfg)
    except NonFiniteLoss as err:
        print(f"seqbackbone: {err}", file=sys.stderr)
        return 1
    return 0


def _base_build_model():
    from .base import Task

    return Task.build_model


def cmd_eval(args: argparse.Namespace) -> int:
    from .train import evaluate_run

    if args.data is not None and not Path(args.data).exists():
        raise TaskInputError(f"data path {args.data} does not exist")
    if len(args.run_dir) > 1:
        from .ensemble import evaluate_ensemble

        print(json.dumps(evaluate_ensemble(args.run_dir, args.data, args.device), indent=2, sort_keys=True))
        return 0
    print(json.dumps(evaluate_run(args.run_dir[0], args.data, args.device), indent=2, sort_keys=True))
    return 0


def cmd_list_tasks(args: argparse.Namespace) -> int:
    names = list_tasks()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {get_task(name).description}")
    return 0


def cmd_list_models(args: argparse.Namespace) -> int:
    from seqbackbone.registry import model_table

    rows = list(model_table(args.pattern))
    if not rows:
        raise TaskInputError(f"no registered model matches {args.pattern!r}")
    width = max(len(name) for name, _, _ in rows)
    for name, n_params, cfg in rows:
        what = " ".join(str(cfg[k]) for k in ("modality", "task") if cfg.get(k))
        print(f"{name:<{width}}  {n_params / 1e6:8.2f}M  {what}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .generate import run

    return run(args)


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "generate": cmd_generate, "list-tasks": cmd_list_tasks,
            "list-models": cmd_list_models}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except TaskInputError as err:
        print(f"seqbackbone: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("seqbackbone: interrupted (a run resumes from its last.ckpt with --resume RUN_DIR)", file=sys.stderr)
        return 130
