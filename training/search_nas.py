#!/usr/bin/env python
"""Neural architecture search for the Prototypical network's backbone on Omniglot.

    python training/search_nas.py                          # controller, ENAS weight sharing
    python training/search_nas.py --no-share               # every child trains from scratch
    python training/search_nas.py --compare-sharing        # both, same budget: time to the same reward
    python training/search_nas.py --compare-random         # controller vs uniformly random designs
    python training/search_nas.py --train-config training/configs/nas_best_omniglot.yaml

The controller picks, per layer, filters (24/36/48/64), kernel height and width (1/3/5/7) and
stride height and width (1/2/3) (Zoph & Le 2017). Each child is a Prototypical network trained
for --steps 5-way 1-shot episodes; its 5-way 1-shot validation accuracy is the reward.
The best design is written to OUT/nas_best.yaml, a training config for the registered
``nas_cnn`` backbone (train it from scratch with --train-config or with train_h.py --config).
Defaults fit the 30-minute 2-core CPU budget: the default 100 designs took 6 minutes on one
busy core (2.4-3.7 s a child), and --time-limit-min 28 caps the search anyway.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from h_model.checkpoint import write_json  # noqa: E402
from h_model.search.cli import common_parser, exit_code, make_task, print_summary, reinforce_config, run_search  # noqa: E402
from h_model.search.nas import NASEvaluator, NASSpace, rebuild_info  # noqa: E402
from h_model.search.reinforce import Reinforce, time_to_reach  # noqa: E402

TRAIN_SETTINGS = {"variant": "proto", "dataset": "omniglot", "image_size": 28, "episodes": 2400,
                  "time_limit_min": 24, "train_way": 60, "train_shot": 5, "train_query": 5, "val_way": 5,
                  "val_shot": 1, "val_every": 150, "val_episodes": 600, "lr": 0.001, "lr_schedule": "cosine",
                  "eval_episodes": 1000, "out": "runs/nas_best_omniglot"}


def best_config(design: list[dict[str, int]], reward: float | None = None) -> str:
    """A train_h.py YAML config that trains ``design`` from scratch as the nas_cnn backbone."""
    cfg: dict[str, Any] = {**TRAIN_SETTINGS, "backbone": "nas_cnn", **{k: v for k, v in rebuild_info(design).items()
                                                                         if k == "backbone_kwargs"}}
    head = ("# Best architecture of training/search_nas.py (results.json 'best'), trained from scratch:\n"
            "#   python training/train_h.py --config THIS_FILE\n"
            "#   python training/search_nas.py --train-config THIS_FILE\n")
    if reward is not None:
        head += f"# search reward (5-way 1-shot validation accuracy after the brief child training): {reward:.4f}\n"
    return head + yaml.safe_dump(cfg, sort_keys=False)


def compare_sharing(space: NASSpace, a: argparse.Namespace) -> dict[str, Any]:
    """Shared and unshared searches, same budget and seed; wall time to reach the same best reward."""
    task = make_task(a)
    runs = {}
    for name, share in (("shared", True), ("unshared", False)):
        s = Reinforce(space, NASEvaluator(task, share=share), reinforce_config(a, Path(a.out) / name, a.random))
        s.run()
        runs[name] = s
    best = {k: s.summary()["best"]["reward"] for k, s in runs.items()}
    target = min(best.values())
    res = {"target_reward": target, "best_reward": best,
           "seconds_to_target": {k: time_to_reach(s.rows, target) for k, s in runs.items()},
           "total_seconds": {k: round(s.elapsed, 1) for k, s in runs.items()}, "budget": a.budget}
    top = max(runs, key=lambda k: best[k])
    b = runs[top].summary()["best"]
    out = {"best": {**b, "mode": top, "rebuild": rebuild_info(b["design"])}, "sharing": res,
           "runs": {k: s.summary() for k, s in runs.items()}, "settings": vars(a)}
    write_json(Path(a.out) / "results.json", out)
    print(f"best reward: shared {best['shared']:.4f}, unshared {best['unshared']:.4f}; to reach {target:.4f}: "
          f"shared {res['seconds_to_target']['shared']} s, unshared {res['seconds_to_target']['unshared']} s")
    return out


def train_config(path: str) -> int:
    """Train a nas_cnn config from scratch with the project's training loop."""
    from h_model.trainer import TrainConfig, train
    train(TrainConfig.from_dict(yaml.safe_load(Path(path).read_text())))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = common_parser(__doc__, budget=100, steps=30, out="runs/search_nas")
    ap.add_argument("--layers", type=int, default=3, help="convolutional layers per design")
    ap.add_argument("--no-share", action="store_true", help="train every child from scratch (no ENAS sharing)")
    ap.add_argument("--compare-sharing", action="store_true", help="search with and without sharing, same budget")
    ap.add_argument("--train-config", default=None, help="train this nas_cnn YAML config from scratch and exit")
    a = ap.parse_args(argv)

    def search() -> int:
        if a.train_config:
            return train_config(a.train_config)
        space = NASSpace(a.layers)
        if a.compare_sharing:
            results = compare_sharing(space, a)
        else:
            task = make_task(a)
            results = run_search(space, lambda: NASEvaluator(task, share=not a.no_share), a, rebuild_info,
                                 {"weight_sharing": not a.no_share})
            print_summary(results)
        best = results["best"]
        (Path(a.out) / "nas_best.yaml").write_text(best_config(best["design"], best["reward"]))
        print(f"wrote {Path(a.out) / 'results.json'} and {Path(a.out) / 'nas_best.yaml'}")
        return 0

    return exit_code(search)


if __name__ == "__main__":
    sys.exit(main())
