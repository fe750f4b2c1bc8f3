#!/usr/bin/env python
"""PowerSign and AddSign against SGD with momentum and Adam on a Prototypical H-network.

    python benchmarks/bench_optimizers.py                  # 6 optimizers, lr tuned, then 3 seeds
    python benchmarks/bench_optimizers.py --steps 100 --seeds 1 --optimizers Adam PowerSign   # quick look

Same budget for every optimizer: a small conv net (4 x 32 channels) trained as a Prototypical
network for ``--steps`` ``--way``-way 5-shot Omniglot episodes (10-way by default). Each
optimizer's learning rate is picked from its grid by 5-way 1-shot accuracy on the validation
characters (seed 0); then ``--seeds`` fresh seeds train at that rate and are scored on the
evaluation alphabets (5-way 1-shot, ``--eval-episodes`` episodes). The sign optimizers' decayed variants (``-ld``: linear decay of
the sign term over the run) are included. Prints the table and writes ``--json`` (and a PNG beside it).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from h_model.plots import accuracy_bars, pyplot, save_figure, write_report  # noqa: E402
from h_model.data import load_splits  # noqa: E402
from h_model.search.optimizers import AddSign, PowerSign  # noqa: E402
from h_model.search.task import ChildConfig, FewShotTask, SmallConvNet  # noqa: E402

Params = Iterable[nn.Parameter]
SIGN_LRS = (0.003, 0.01, 0.03, 0.1)


def optimizers(steps: int) -> dict[str, tuple[Callable[[Params, float], torch.optim.Optimizer], tuple[float, ...]]]:
    """name -> (factory(params, lr), learning-rate grid)."""
    return {
        "SGD-momentum": (lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9), (0.003, 0.01, 0.03, 0.1)),
        "Adam": (lambda p, lr: torch.optim.Adam(p, lr=lr), (3e-4, 1e-3, 3e-3, 1e-2)),
        "PowerSign": (lambda p, lr: PowerSign(p, lr=lr), SIGN_LRS),
        "PowerSign-ld": (lambda p, lr: PowerSign(p, lr=lr, decay="linear", decay_steps=steps), SIGN_LRS),
        "AddSign": (lambda p, lr: AddSign(p, lr=lr), SIGN_LRS),
        "AddSign-ld": (lambda p, lr: AddSign(p, lr=lr, decay="linear", decay_steps=steps), SIGN_LRS),
    }


def plot(results: dict, path: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(6.5, 3.6))
    accuracy_bars(ax, results, lambda n: "Sign" in n, rotation=30)
    ax.set_title("Prototypical network on Omniglot, same budget")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--optimizers", nargs="+", default=None, help="subset of the optimizers (default: all)")
    ap.add_argument("--steps", type=int, default=300, help="training episodes per run (5-shot, 5 queries)")
    ap.add_argument("--way", type=int, default=10, help="classes per training episode")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--val-episodes", type=int, default=300)
    ap.add_argument("--eval-episodes", type=int, default=1000)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--json", default="benchmarks/results/optimizers.json")
    a = ap.parse_args(argv)
    table = optimizers(a.steps)
    names = a.optimizers or list(table)
    unknown = set(names) - set(table)
    if unknown:
        raise SystemExit(f"unknown optimizers {sorted(unknown)}; choose from {list(table)}")
    train, val, test = load_splits("omniglot", data_root=a.data_root, image_size=28)
    cfg = ChildConfig(way=a.way, shot=5, query=5, steps=a.steps)
    tune = FewShotTask(train, val, ChildConfig(**{**vars(cfg), "val_episodes": a.val_episodes}))
    final = FewShotTask(train, test, ChildConfig(**{**vars(cfg), "val_episodes": a.eval_episodes}))

    def run(task: FewShotTask, name: str, lr: float, seed: int) -> float:
        torch.manual_seed(seed)
        net = SmallConvNet(nn.ReLU, 1, a.hidden)
        return task.score(net, seed, lambda ps: table[name][0](ps, lr))

    t0 = time.time()
    jobs = [(n, lr) for n in names for lr in table[n][1]]
    tuning: dict[str, dict[str, float]] = {n: {} for n in names}
    for n, lr in tqdm(jobs, desc="lr grid (validation, seed 0)", unit="run", dynamic_ncols=True):
        tuning[n][str(lr)] = run(tune, n, lr, 0)
    best_lr = {n: float(max(tuning[n], key=tuning[n].get)) for n in names}
    acc: dict[str, list[float]] = {n: [] for n in names}
    for n, seed in tqdm([(n, s) for n in names for s in range(1, a.seeds + 1)], desc="seeds (test)", unit="run",
                        dynamic_ncols=True):
        acc[n].append(run(final, n, best_lr[n], seed))
    results = {n: {"lr": best_lr[n], "mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                   "runs": v, "validation_by_lr": tuning[n],
                   "lr_at_grid_edge": best_lr[n] in (min(table[n][1]), max(table[n][1]))} for n, v in acc.items()}
    print(f"\nPrototypical network, {a.steps} episodes of {a.way}-way 5-shot; 5-way 1-shot test accuracy over "
          f"{a.seeds} seeds ({a.eval_episodes} episodes each)")
    print("| optimizer | lr (tuned) | accuracy (%) mean ± std | runs |\n|---|---|---|---|")
    for n, r in results.items():
        runs = ", ".join(f"{100 * x:.2f}" for x in r["runs"])
        print(f"| {n} | {r['lr']:g} | {100 * r['mean']:.2f} ± {100 * r['std']:.2f} | {runs} |")
    edge = [n for n, r in results.items() if r["lr_at_grid_edge"]]
    if edge:
        print(f"note: the tuned rate of {', '.join(edge)} lies at the edge of its grid; a wider grid may do better")
    out = {"settings": vars(a), "seconds": round(time.time() - t0, 1), "torch_threads": torch.get_num_threads(),
           "results": results}
    if a.json:
        write_report(a.json, out, lambda png: plot(results, png))
    return 0


if __name__ == "__main__":
    sys.exit(main())
