#!/usr/bin/env python
"""Activation-function search (Ramachandran et al. 2017) on Omniglot few-shot episodes.

    python training/search_activation.py                   # one core unit: b(u1(x), u2(x))
    python training/search_activation.py --units 2         # two core units
    python training/search_activation.py --compare-random  # controller vs uniformly random designs

Each candidate is the activation of a small conv net (4 x 16 channels) trained as a Prototypical
network for --steps episodes; its 5-way 1-shot validation accuracy is the reward (NaN or
overflowing candidates score 0). 100 episodes, not 30: at 30 the reward's seed-to-seed spread
(about 0.05) hid the differences between activations. Defaults fit the 30-minute 2-core CPU
budget: about 3.5 s a candidate on one core (--time-limit-min 28 caps the search anyway).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from h_model.search.activations import ActivationEvaluator, ActivationSpace, formula  # noqa: E402
from h_model.search.cli import common_parser, search_main  # noqa: E402


def rebuild(design: dict[str, Any]) -> dict[str, Any]:
    return {"formula": formula(design),
            "python": f"h_model.search.activations.SearchedActivation({design!r})  # an nn.Module"}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = common_parser(__doc__, budget=150, steps=100, out="runs/search_activation")
    ap.add_argument("--units", type=int, default=1, choices=(1, 2), help="core units per activation")
    ap.add_argument("--hidden", type=int, default=16, help="channels of the child conv net")
    a = ap.parse_args(argv)
    return search_main(a, ActivationSpace(a.units), lambda task: ActivationEvaluator(task, a.hidden), rebuild,
                       formula, "activation")


if __name__ == "__main__":
    sys.exit(main())
