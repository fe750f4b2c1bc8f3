#!/usr/bin/env python
"""Pick a face ensemble on validation identities: every model alone, and every group of 2 to
``--max-size`` of them side by side (``concat``) and averaged (``mean``), scored by 10-fold
verification on validation pairs; the best is the highest accuracy (then AUC).

    python benchmarks/select_face_ensemble.py --model runs/a --model runs/b [--model ...] [--max-size 3] [--test]

Validation pairs are built like ``bench_faces.py``'s test pairs (3,000 per list, identity-disjoint
folds; all sets, and the in-the-wild sets alone) over the validation identities, which training
never saw but chose its checkpoints on. ``--test`` adds the test-pair figures, for the record
only: the choice is made on validation. Writes ``--out`` (JSON).
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_faces as bf  # noqa: E402
from h_model.plots import write_report  # noqa: E402
from h_model.data.faces import crop_kwargs, faces_splits  # noqa: E402
from h_model.faces.verifier import l2_normalize  # noqa: E402


def scores(z: np.ndarray, data, pairs: int, folds: int, seed: int) -> dict[str, dict[str, float]]:
    members = bf.members_of(data)
    out = {}
    for key, sets in (("all", None), ("wild", bf.WILD_SETS)):
        v = bf.verification(z, bf.build_pairs(members, pairs, folds, seed, sets), members)
        out[key] = {"accuracy": v["accuracy_mean"], "std": v["accuracy_std"], "auc": v["auc"],
                    "tar_at_far_1e-3": v["tar_at_far"]["0.001"]["tar"]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="face checkpoint (two or more)")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--pairs", type=int, default=3000)
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-size", type=int, default=3, help="largest ensemble considered")
    ap.add_argument("--test", action="store_true", help="also report test pairs (not used to choose)")
    ap.add_argument("--out", default="benchmarks/results/faces_ensemble_selection.json")
    a = ap.parse_args(argv)
    if len(a.model) < 2:
        ap.error("give at least two --model")
    root = Path(a.data_root).expanduser().resolve() if a.data_root else bf.default_data_root()
    embedders = {Path(p).name: bf.model_embedder(p, Path(p).name) for p in a.model}
    align = next(iter(embedders.values())).verifier.detector.settings
    _, val, test = faces_splits(root, seed=a.seed, **crop_kwargs(align))
    splits = {"val": val, **({"test": test} if a.test else {})}
    z = {s: {n: l2_normalize(e.embed(d.images)) for n, e in embedders.items()} for s, d in splits.items()}
    candidates: dict[str, dict[str, dict]] = {}
    combos = [c for k in range(1, max(1, a.max_size) + 1) for c in itertools.combinations(embedders, k)]
    for combo in combos:
        for mode in (("single",) if len(combo) == 1 else ("concat", "mean")):
            name = combo[0] if mode == "single" else f"{'+'.join(combo)} ({mode})"
            res = {}
            for s, d in splits.items():
                parts = [z[s][n] for n in combo]
                emb = np.concatenate(parts, 1) if mode == "concat" else np.sum(parts, 0)
                res[s] = scores(l2_normalize(emb), d, a.pairs, a.folds, a.seed)
            candidates[name] = res
            line = " | ".join(f"{s} all {100 * r['all']['accuracy']:.2f} (AUC {r['all']['auc']:.4f}) wild "
                              f"{100 * r['wild']['accuracy']:.2f}" for s, r in res.items())
            print(f"{name:32s} {line}", flush=True)
    best = max(candidates, key=lambda k: (candidates[k]["val"]["all"]["accuracy"], candidates[k]["val"]["all"]["auc"]))
    print(f"best on validation pairs (accuracy, then AUC): {best}")
    out = {"benchmark": "face ensemble selection", "models": a.model, "max_size": a.max_size, "pairs": a.pairs, "folds": a.folds,
           "seed": a.seed, "chosen_on": "val", "best_on_val": best, "candidates": candidates}
    write_report(a.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
