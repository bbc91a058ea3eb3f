"""Run logs: metrics.csv (one row per evaluation) and curves.png (loss and metric against step)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends evaluation rows to `run_dir/metrics.csv` and redraws `run_dir/curves.png` from them."""

    def __init__(self, run_dir: str | Path, metric: str) -> None:
        self.path = Path(run_dir) / "metrics.csv"
        self.plot_path = Path(run_dir) / "curves.png"
        self.metric = metric
        self.rows: list[dict[str, Any]] = []
        if self.path.is_file():
            with open(self.path, newline="") as fh:
                self.rows = [dict(r) for r in csv.DictReader(fh)]

    def truncate(self, step: int) -> None:
        """Drop rows after `step` (a resumed run rewrites what came after its checkpoint)."""
        self.rows = [r for r in self.rows if int(float(r["step"])) <= step]
        self._write()

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._write()
        self.plot()

    def _write(self) -> None:
        if not self.rows:
            if self.path.exists():
                self.path.unlink()
            return
        fields: list[str] = []
        for r in self.rows:
            fields += [k for k in r if k not in fields]
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            for r in self.rows:
                writer.writerow({k: _fmt(r.get(k, "")) for k in fields})
        tmp.replace(self.path)

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def series(key: str) -> tuple[list[float], list[float]]:
            xs, ys = [], []
            for r in self.rows:
                v = _num(r.get(key))
                if v is not None:
                    xs.append(float(r["step"]))
                    ys.append(v)
            return xs, ys

        fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
        for key in ("train_loss", "val_loss"):
            xs, ys = series(key)
            if xs:
                ax_loss.plot(xs, ys, marker=".", label=key)
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("loss")
        ax_loss.legend(loc="best")
        xs, ys = series(f"val_{self.metric}")
        if xs:
            ax_metric.plot(xs, ys, marker=".", color="C2", label=f"val_{self.metric}")
            ax_metric.legend(loc="best")
        ax_metric.set_xlabel("step")
        ax_metric.set_ylabel(self.metric)
        fig.tight_layout()
        fig.savefig(self.plot_path, dpi=100)
        plt.close(fig)


def _num(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v
