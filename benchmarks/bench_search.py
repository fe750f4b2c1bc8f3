#!/usr/bin/env python
"""Seconds per design of the three searches, and the default budgets' projected wall time.

    python benchmarks/bench_search.py --designs 3        # run on an idle machine to size budgets

Scores ``--designs`` uniformly random designs per search with the scripts' default child
settings on Omniglot and projects ``budget x mean seconds`` for each script's default budget.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from h_model.checkpoint import write_json  # noqa: E402
from h_model.search.activations import ActivationEvaluator, ActivationSpace  # noqa: E402
from h_model.search.nas import NASEvaluator, NASSpace  # noqa: E402
from h_model.search.optimizers import OptimizerEvaluator, OptimizerSpace  # noqa: E402
from h_model.search.task import ChildConfig, FewShotTask, omniglot_task  # noqa: E402

DEFAULT_BUDGETS = {"nas": 100, "optimizer": 200, "activation": 150}  # the scripts' --budget defaults
DEFAULT_STEPS = {"nas": 30, "optimizer": 30, "activation": 100}       # ... and --steps defaults


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--designs", type=int, default=3)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--json", default=None, help="also write the figures here")
    a = ap.parse_args(argv)
    t0 = time.time()
    base = omniglot_task(a.data_root)
    tasks = {n: FewShotTask(base.train, base.val, ChildConfig(steps=s)) for n, s in DEFAULT_STEPS.items()}
    print(f"data loaded in {time.time() - t0:.1f} s; torch threads: {torch.get_num_threads()}")
    searches = {"nas": (NASSpace(3), NASEvaluator(tasks["nas"])),
                "optimizer": (OptimizerSpace(), OptimizerEvaluator(tasks["optimizer"])),
                "activation": (ActivationSpace(1), ActivationEvaluator(tasks["activation"]))}
    out = {}
    for name, (space, ev) in searches.items():
        g = torch.Generator().manual_seed(0)
        times = []
        for i in range(a.designs):
            design = space.decode([int(torch.randint(n, (1,), generator=g)) for n in space.num_choices])
            t = time.time()
            ev(design, i)
            times.append(time.time() - t)
        mean = sum(times) / len(times)
        out[name] = {"seconds_per_design": round(mean, 2), "default_budget": DEFAULT_BUDGETS[name],
                     "projected_minutes": round(mean * DEFAULT_BUDGETS[name] / 60, 1)}
        print(f"{name}: {mean:.2f} s/design -> {out[name]['projected_minutes']} min for the default "
              f"{DEFAULT_BUDGETS[name]} designs (the scripts also stop at --time-limit-min 28)")
    if a.json:
        write_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
