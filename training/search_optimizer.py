#!/usr/bin/env python
"""Neural optimizer search (Bello et al. 2017) and the crescent (Rosenbrock) experiment.

    python training/search_optimizer.py                    # controller search of update rules
    python training/search_optimizer.py --compare-random   # controller vs uniformly random rules
    python training/search_optimizer.py --crescent         # SGD/Momentum/RMSProp/Adam/PowerSign on Rosenbrock

A rule is delta = binary(unary1(op1), unary2(op2)) over the paper's operands, unary and binary
functions; it compiles to a torch.optim.Optimizer (w <- w - lr * delta) that trains a small
conv net (4 x 16 channels) as a Prototypical network on Omniglot episodes for --steps steps at
each learning rate of --lrs; the best validation accuracy is the reward. Defaults fit the
30-minute 2-core CPU budget: the default 200 rules took 7.5 minutes on one busy core
(--time-limit-min 28 caps the search anyway).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from h_model.checkpoint import write_json  # noqa: E402
from h_model.search.cli import common_parser, search_main  # noqa: E402
from h_model.search.optimizers import OptimizerEvaluator, OptimizerSpace, crescent, rule_string  # noqa: E402


def rebuild(rule: dict[str, str]) -> dict[str, Any]:
    return {"formula": rule_string(rule), "python": f"h_model.search.optimizers.RuleOptimizer(params, rule={rule!r}, lr=...)"}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = common_parser(__doc__, budget=200, steps=30, out="runs/search_optimizer")
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1], help="learning rates tried per rule")
    ap.add_argument("--crescent", action="store_true", help="run the Rosenbrock experiment instead of a search")
    ap.add_argument("--crescent-steps", type=int, default=5000)
    a = ap.parse_args(argv)
    if a.crescent:
        res = crescent(a.out, steps=a.crescent_steps)
        write_json(Path(a.out) / "crescent.json", res)
        print(res["table"])
        print(f"wrote {res['png']}")
        return 0
    return search_main(a, OptimizerSpace(), lambda task: OptimizerEvaluator(task, a.lrs), rebuild, rule_string, "rule")


if __name__ == "__main__":
    sys.exit(main())
