"""bench_faces' pair-list diagnostics: which impostors set TAR at FAR 1e-3, and which genuine pairs fall under it."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_faces import at_far_1e3  # noqa: E402
from h_model.faces.pairs import Pair, PairList  # noqa: E402


def test_hardest_impostors_and_genuine_pairs_under_the_threshold() -> None:
    pairs = [Pair("a/p1", 1, "a/p1", 2), Pair("b/p2", 1, "b/p2", 2), Pair("a/p3", 1, "a/p3", 2),
             Pair("a/p1", 1, "b/p2", 1), Pair("a/p3", 1, "b/p2", 2), Pair("b/p2", 1, "a/p1", 2),
             Pair("a/p3", 2, "a/p1", 1)]
    pl = PairList(1, 3, pairs)
    scores = np.array([0.9, 0.4, 0.5, 0.3, 0.7, 0.6, 0.1])
    same = pl.same()
    out = at_far_1e3(pl, scores, same, threshold=0.55)
    assert [h["score"] for h in out["hardest_impostors"]] == [0.7, 0.6, 0.3]
    assert out["hardest_impostors"][0]["pair"] == "a/p3\t1\tb/p2\t2"
    assert out["genuine_under_tar_1e-3_threshold"] == {"b": 1, "a": 1}
