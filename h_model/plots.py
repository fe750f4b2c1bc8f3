"""Training curves as a PNG."""
from __future__ import annotations

import csv
from pathlib import Path


def plot_curves(metrics_csv: Path, out_png: Path, title: str = "") -> None:
    """Loss (left) and train/validation accuracy (right) against training episodes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
