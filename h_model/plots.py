"""Figures: training curves, accuracy bars; a benchmark's JSON report written with its figure."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable

from .checkpoint import write_json


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def accuracy_bars(ax, results: dict[str, dict[str, float]], highlight: Callable[[str], bool],
                  rotation: int, **tick_kw: Any) -> None:
    """Bars of mean 5-way 1-shot accuracy (%) with +-std error bars (``results[name]`` holds
    ``mean`` and ``std`` as fractions); ``highlight``-ed names orange; the y axis fits the bars."""
    names = list(results)
    means = [100 * results[n]["mean"] for n in names]
    stds = [100 * results[n]["std"] for n in names]
    ax.bar(range(len(names)), means, yerr=stds, color=["C1" if highlight(n) else "C0" for n in names])
    ax.set_xticks(range(len(names)), names, rotation=rotation, ha="right", **tick_kw)
    ax.set_ylim(max(0.0, min(m - s for m, s in zip(means, stds)) - 2),
                min(100.0, max(m + s for m, s in zip(means, stds)) + 1))
    ax.set_ylabel("5-way 1-shot test accuracy (%)")


def save_figure(fig, path: str | Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


def write_report(path: str | Path, report: Any, draw: Callable[[Path], None] | None = None,
                 indent: int = 2) -> None:
    """``report`` as JSON at ``path`` and, with ``draw``, its figure beside it (``draw(png)``); says what it wrote."""
    path = Path(path)
    write_json(path, report, indent)
    written = [path]
    if draw is not None:
        draw(path.with_suffix(".png"))
        written.append(path.with_suffix(".png"))
    print("wrote " + " and ".join(map(str, written)))


def plot_curves(metrics_csv: Path, out_png: Path, title: str = "") -> None:
    """Loss (left) and train/validation accuracy (right) against training episodes."""
    plt = pyplot()
    with open(metrics_csv) as f:
        rows = list(csv.DictReader(f))
    train = [r for r in rows if r["loss"] != ""]
    ep = [int(r["episode"]) for r in train]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(ep, [float(r["loss"]) for r in train], color="tab:blue")
    a.set(xlabel="episode", ylabel="training loss", yscale="log", title="loss")
    b.plot(ep, [100 * float(r["train_acc"]) for r in train], label="train (query)", color="tab:blue", alpha=0.6)
    val = [(int(r["episode"]), 100 * float(r["val_acc"])) for r in rows if r["val_acc"]]
    if val:
        b.plot(*zip(*val), "o-", label="validation", color="tab:red")
    b.set(xlabel="episode", ylabel="accuracy (%)", title="accuracy")
    b.legend()
    b.grid(alpha=0.3)
    a.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = out_png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out_png)
