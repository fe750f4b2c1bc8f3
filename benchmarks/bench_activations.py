#!/usr/bin/env python
"""Swish against ReLU, LeakyReLU, PReLU, Softplus, ELU, SELU and GELU, the Swish paper's table.

    python benchmarks/bench_activations.py                        # 3 tasks x 9 activations x 3 seeds
    python benchmarks/bench_activations.py --tasks omniglot-proto --seeds 1 --steps 50   # a quick look

Every run trains the same small conv net (4 x [conv3x3, BatchNorm, activation, maxpool]) as an
H-network on few-shot episodes with Adam, then scores 5-way 1-shot accuracy on held-out classes
(Omniglot's evaluation alphabets; the test identities of the face set). Tasks: Prototypical and
Matching networks on Omniglot, and a Prototypical network on AR face crops (``faces/ar_face_lowres``,
a class-folder set from ``../shared/data``). Swish counts a win over a baseline on a task when its
mean over the seeds is higher by more than the standard error of the difference, a loss when lower
by more, a tie otherwise. Prints the tables and writes ``--json`` (and a PNG beside it).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from h_model.plots import accuracy_bars, pyplot, save_figure, write_report  # noqa: E402
from h_model.data import load_splits  # noqa: E402
from h_model.data.root import resolve_data_root  # noqa: E402
from h_model.search.activations import Swish  # noqa: E402
from h_model.search.task import ChildConfig, FewShotTask, SmallConvNet  # noqa: E402

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "Swish": lambda: Swish(1.0, trainable=True),
    "Swish-1": lambda: Swish(1.0),
    "ReLU": nn.ReLU,
    "LeakyReLU": lambda: nn.LeakyReLU(0.01),
    "PReLU": nn.PReLU,
    "Softplus": nn.Softplus,
    "ELU": nn.ELU,
    "SELU": nn.SELU,
    "GELU": nn.GELU,
}
BASELINES = ["ReLU", "LeakyReLU", "PReLU", "Softplus", "ELU", "SELU", "GELU"]


def make_tasks(names: list[str], data_root: Path, cfg: ChildConfig) -> dict[str, FewShotTask]:
    """Each task trains on its training classes and scores on its held-out test classes."""
    tasks = {}
    for name in names:
        if name.startswith("omniglot-"):
            train, _, test = load_splits("omniglot", data_root=str(data_root), image_size=28)
            variant = name.split("-", 1)[1]
        elif name == "faces-ar-proto":
            train, _, test = load_splits("folder", data_root=str(data_root / "faces" / "ar_face_lowres"),
                                         image_size=32, channels=1, seed=0)
            variant = "proto"
        else:
            raise SystemExit(f"unknown task {name!r}")
        tasks[name] = FewShotTask(train, test, ChildConfig(**{**vars(cfg), "variant": variant}))
    return tasks


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def verdict(swish: list[float], base: list[float]) -> str:
    """'win', 'tie' or 'loss' of Swish against a baseline: mean difference against its standard error."""
    d = statistics.fmean(swish) - statistics.fmean(base)
    se = math.sqrt(sum(statistics.variance(x) / len(x) for x in (swish, base) if len(x) > 1))
    return "win" if d > se else "loss" if d < -se else "tie"


def plot(results: dict, path: Path) -> None:
    tasks = list(results)
    fig, axes = pyplot().subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        accuracy_bars(ax, results[task], lambda n: n.startswith("Swish"), rotation=60, fontsize=8)
        ax.set_title(task, fontsize=10)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["omniglot-proto", "omniglot-matching", "faces-ar-proto"])
    ap.add_argument("--activations", nargs="+", default=list(ACTIVATIONS), choices=list(ACTIVATIONS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300, help="training episodes per run (5-way 1-shot, 5 queries)")
    ap.add_argument("--hidden", type=int, default=32, help="channels of the conv net")
    ap.add_argument("--eval-episodes", type=int, default=600)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--json", default="benchmarks/results/activations.json")
    a = ap.parse_args(argv)
    if "Swish" not in a.activations:
        raise SystemExit("--activations must include Swish (it is what the table compares)")
    cfg = ChildConfig(steps=a.steps, val_episodes=a.eval_episodes)
    tasks = make_tasks(a.tasks, resolve_data_root(a.data_root), cfg)
    runs = [(t, n, s) for t in tasks for n in a.activations for s in range(a.seeds)]
    acc: dict[str, dict[str, list[float]]] = {t: {n: [] for n in a.activations} for t in tasks}
    t0 = time.time()
    for task, name, seed in tqdm(runs, desc="activation runs", unit="run", dynamic_ncols=True):
        torch.manual_seed(seed)
        net = SmallConvNet(ACTIVATIONS[name], tasks[task].train.images.shape[1], a.hidden)
        acc[task][name].append(tasks[task].score(net, seed=seed))
    results = {t: {n: dict(zip(("mean", "std"), mean_std(v)), runs=v) for n, v in per.items()} for t, per in acc.items()}
    baselines = [b for b in BASELINES if b in a.activations]
    table = {b: {t: verdict(acc[t]["Swish"], acc[t][b]) for t in tasks} for b in baselines}
    counts = {b: {k: sum(v == k for v in table[b].values()) for k in ("win", "tie", "loss")} for b in baselines}

    print(f"\n5-way 1-shot test accuracy (%), mean ± std over {a.seeds} seeds, {a.steps} training episodes each")
    print("| activation | " + " | ".join(tasks) + " |")
    print("|---|" + "---|" * len(tasks))
    for n in a.activations:
        cells = [f"{100 * results[t][n]['mean']:.2f} ± {100 * results[t][n]['std']:.2f}" for t in tasks]
        print(f"| {n} | " + " | ".join(cells) + " |")
    print("\n| Swish vs | wins | ties | losses |\n|---|---|---|---|")
    for b in baselines:
        print(f"| {b} | {counts[b]['win']} | {counts[b]['tie']} | {counts[b]['loss']} |")
    out = {"settings": vars(a), "seconds": round(time.time() - t0, 1), "torch_threads": torch.get_num_threads(),
           "accuracy": results, "swish_vs": table, "counts": counts}
    if a.json:
        write_report(a.json, out, lambda png: plot(results, png))
    return 0


if __name__ == "__main__":
    sys.exit(main())
