"""PNG plots of the model benchmark (matplotlib, Agg backend): time and memory against length, decoding against context.

    python -m seqbackbone.bench.plots models.json OUT_DIR     # redraw from a saved run

Colour marks the model family (Mamba, Transformer), line style the direction (solid causal, dashed bidirectional).
Axes are log-log. A length that ran out of memory is marked with an x at the top of the panel, labelled OOM.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, LogFormatter, NullLocator  # noqa: E402

COLORS = {"mamba": "tab:blue", "transformer": "tab:orange"}
OOM = "OOM"


def _label(n: int) -> str:
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}K"
    return str(n)


class _PlainLogFormatter(LogFormatter):
    """Log-axis labels as plain numbers (0.4, 2, 300) rather than 4 x 10^-1; matplotlib still decides which ticks
    get a label."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        return f"{x:g}"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _length_axis(ax: plt.Axes, lengths: list[int], xlabel: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_PlainLogFormatter())
    ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    if lengths:
        ax.xaxis.set_major_locator(FixedLocator(sorted(set(lengths))))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([_label(n) for n in sorted(set(lengths))])
    ax.set_xlabel(xlabel)
    ax.grid(True, which="both", alpha=0.3)


def _series(
    ax: plt.Axes, rows: list[dict], x_key: str, y_key: str, label_suffix: str = "", style: str | tuple = ""
) -> bool:
    """One line per variant: y_key against x_key; OOM points become x markers at the top. True if anything drawn."""
    drawn = False
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        family = mine[0]["family"]
        causal = mine[0].get("causal", True)
        points = [(r[x_key], r[y_key]) for r in mine if _is_number(r[y_key]) and r[y_key] > 0]
        linestyle = style or ("-" if causal else "--")
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", markersize=4, linestyle=linestyle, color=COLORS.get(family),
                    label=variant + label_suffix)
            drawn = True
        for r in mine:
            if r[y_key] == OOM:
                ax.plot([r[x_key]], [0.97], marker="x", markersize=9, color=COLORS.get(family),
                        transform=ax.get_xaxis_transform(), clip_on=False)
                ax.annotate(OOM, (r[x_key], 0.97), xycoords=ax.get_xaxis_transform(), textcoords="offset points",
                            xytext=(0, -12), ha="center", fontsize=7, color=COLORS.get(family))
    return drawn


def _legend(ax: plt.Axes, drawn: bool) -> None:
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.set_ylim(0.1, 10)  # a log axis with no data has no usable default limits
        ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", va="center", color="gray")


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_models(result: dict, out_dir: Path | str) -> list[Path]:
    """Write models_train_time.png, models_inference_time.png, models_memory.png and, when decoding was measured,
    models_decode.png under out_dir. `result` is the dict that `seqbackbone.bench.models` saves as models.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, decode, meta = result["rows"], result.get("decode", []), result["meta"]
    lengths = [r["length"] for r in rows]
    tokens = f"{meta['tokens']:,} tokens per batch"
    where = f"{meta.get('device_name', '')}, {tokens}"
    paths = []

    for key, name, title in (
        ("train_ms", "models_train_time.png", "Training step (forward + backward)"),
        ("infer_ms", "models_inference_time.png", "Inference forward"),
    ):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        drawn = _series(ax, rows, "length", key)
        _length_axis(ax, lengths, "sequence length L (batch = tokens / L)")
        ax.set_ylabel("time per batch (ms)")
        ax.set_title(f"{title}\n{where}", fontsize=10)
        _legend(ax, drawn)
        paths.append(_save(fig, out_dir / name))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for ax, key, title in ((axes[0], "train_peak_gib", "training step"), (axes[1], "infer_peak_gib", "inference")):
        drawn = _series(ax, rows, "length", key)
        _length_axis(ax, lengths, "sequence length L (batch = tokens / L)")
        ax.set_title(f"Peak memory, {title}\n{where}", fontsize=10)
        _legend(ax, drawn)
    axes[0].set_ylabel("peak allocated (GiB)")
    paths.append(_save(fig, out_dir / "models_memory.png"))

    if decode:
        contexts = [r["context"] for r in decode]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
        drawn = _series(axes[0], decode, "context", "decode_ms", " (eager)", "-")
        drawn |= _series(axes[0], decode, "context", "decode_graph_ms", " (CUDA graph)", ":")
        bandwidth = meta.get("copy_bandwidth_tbs")
        if _is_number(bandwidth) and bandwidth > 0:
            # the least a step can take: its weights and decoding state read once at the measured bandwidth
            floors = [{**r, "floor_ms": r["step_read_mib"] * 2**20 / (bandwidth * 1e12) * 1e3}
                      for r in decode if _is_number(r.get("step_read_mib"))]
            drawn |= _series(axes[0], floors, "context", "floor_ms", " (read floor)", (0, (1, 4)))
        _length_axis(axes[0], contexts, "context (tokens already seen)")
        axes[0].set_ylabel("time per decoded token (ms)")
        axes[0].set_title("Decoding one token, batch 1", fontsize=10)
        _legend(axes[0], drawn)
        drawn = _series(axes[1], decode, "context", "prefill_ms")
        _length_axis(axes[1], contexts, "prompt length")
        axes[1].set_ylabel("prefill time (ms)")
        axes[1].set_title("Prefill, batch 1", fontsize=10)
        _legend(axes[1], drawn)
        paths.append(_save(fig, out_dir / "models_decode.png"))
    return paths


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m seqbackbone.bench.plots models.json OUT_DIR", file=sys.stderr)
        return 2
    for path in plot_models(json.loads(Path(argv[0]).read_text()), argv[1]):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
