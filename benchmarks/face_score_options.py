#!/usr/bin/env python
"""Scoring options a face model could add after its embedding, scored on validation identities only.

    python benchmarks/face_score_options.py --model h_model/bundled/faces_default --threads 2

Two families, each against the model's plain cosine on the same crops:

- **Cohort score normalisation.** Every crop is compared with a cohort: the crops of the
  training identities (``photos``) or one mean embedding per training identity (``identities``).
  From the ``k`` highest cosines (``k`` 0 = all) come a mean ``mu`` and a spread ``sd`` per crop.
  ``z-mean`` scores a pair ``s - (mu_a + mu_b) / 2``; ``as-norm`` (adaptive symmetric
  normalisation) ``((s - mu_a) / sd_a + (s - mu_b) / sd_b) / 2``. A face that resembles many
  people (a "hub") loses score against everyone.
- **More test-time views.** Each crop is also embedded warped by a view (zoom, shift, rotation:
  :func:`h_model.test_time.embed_view`, border padding) and its per-member unit embeddings are
  summed with the plain ones (the model's own mirror-image view stays in both).

Figures: 10-fold accuracy, AUC and TAR at FAR 1e-3 on the 3,000 validation pairs that
``bench_faces.py`` and ``compare_yunet_sure.py`` build (all sets, in the wild), and TAR at
FAR 1e-3 over every pair of validation crops. Test identities are not read. Writes ``--out``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_faces as bf  # noqa: E402
from h_model.checkpoint import write_json  # noqa: E402
from h_model.data.faces import crop_kwargs, faces_splits  # noqa: E402
from h_model.faces.pairs import pair_metrics, tar_at_far  # noqa: E402
from h_model.faces.scores import l2_normalize  # noqa: E402
from h_model.test_time import embed_view  # noqa: E402

VIEWS = {"zoom_in_5": (0.0, 0.0, 1.05, 0.0), "zoom_out_5": (0.0, 0.0, 0.95, 0.0), "up_3px": (0.0, -3.0, 1.0, 0.0),
         "rotate_5": (0.0, 0.0, 1.0, 5.0), "rotate_-5": (0.0, 0.0, 1.0, -5.0)}

# (scores of pairs i, j) from per-crop cohort statistics
Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def cohort_stats(z: np.ndarray, cohort: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and spread of each row's ``k`` highest cosines to the cohort (all when ``k`` is 0)."""
    s = z @ cohort.T
    if 0 < k < s.shape[1]:
        s = -np.partition(-s, k - 1, axis=1)[:, :k]
    return s.mean(1).astype(np.float64), s.std(1).astype(np.float64)


def normalised(method: str, mu: np.ndarray, sd: np.ndarray) -> Scorer:
    if method == "z-mean":
        return lambda s, i, j: s - 0.5 * (mu[i] + mu[j])
    if method == "as-norm":
        return lambda s, i, j: 0.5 * ((s - mu[i]) / sd[i] + (s - mu[j]) / sd[j])
    raise ValueError(method)


def figures(z: np.ndarray, labels: np.ndarray, pairs: dict[str, Any], members: dict[str, list[int]],
            score: Scorer | None = None) -> dict[str, Any]:
    """Pair-list figures and TAR at FAR 1e-3 over every pair, of unit rows ``z`` scored by ``score``."""
    score = score or (lambda s, i, j: s)
    out: dict[str, Any] = {}
    for name, pl in pairs.items():
        i = np.array([members[p.name1][p.i1 - 1] for p in pl.pairs])
        j = np.array([members[p.name2][p.i2 - 1] for p in pl.pairs])
        m = pair_metrics(score(np.einsum("nd,nd->n", z[i], z[j]).astype(np.float64), i, j), pl.same(), pl.fold_of())
        out[name] = {"accuracy": m["accuracy_mean"], "auc": m["auc"], "tar_at_far_1e-3": m["tar_at_far"]["0.001"]["tar"]}
    i, j = np.triu_indices(len(z), 1)
    s = score((z @ z.T)[i, j].astype(np.float64), i, j)
    out["every_pair_tar_at_far_1e-3"] = tar_at_far(s, labels[i] == labels[j], 1e-3)["tar"]
    return out


def line(name: str, r: dict[str, Any]) -> str:
    return (f"{name:40s} all {100 * r['all']['accuracy']:.2f}% AUC {r['all']['auc']:.4f} "
            f"TAR@1e-3 {100 * r['all']['tar_at_far_1e-3']:.2f}% | wild {100 * r['wild']['accuracy']:.2f}% | "
            f"every pair TAR@1e-3 {100 * r['every_pair_tar_at_far_1e-3']:.2f}%")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a face checkpoint")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--pairs", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", default="50,100,200,400,0", help="cohort sizes k (comma-separated; 0 = the whole cohort)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/faces_score_options.json")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    ks = [int(k) for k in a.k.split(",")]
    if any(k < 0 for k in ks):
        raise SystemExit("--k takes sizes >= 0")
    e = bf.model_embedder(a.model, Path(a.model).name)
    s = bf.align_of(e)
    root = Path(a.data_root).expanduser().resolve() if a.data_root else bf.default_data_root()
    train, val, _ = faces_splits(root, seed=a.seed, **crop_kwargs(s))
    members = bf.members_of(val)
    pairs = {k: bf.build_pairs(members, a.pairs, 10, a.seed, sets) for k, sets in (("all", None),
                                                                                   ("wild", bf.WILD_SETS))}
    labels = val.labels.numpy()
    print(f"{len(val)} validation crops of {len(members)} identities, {len(train)} training crops of "
          f"{train.num_classes} identities: embedding ...", flush=True)
    z_val, z_train = l2_normalize(e.embed(val.images)), l2_normalize(e.embed(train.images))
    report: dict[str, Any] = {"model": a.model, "align": s, "val_crops": len(val), "val_identities": len(members),
                              "cohort_crops": len(train), "cohort_identities": train.num_classes, "results": {}}
    res = report["results"]
    res["plain cosine"] = figures(z_val, labels, pairs, members)
    print(line("plain cosine", res["plain cosine"]), flush=True)
    y_train = train.labels.numpy()
    cohorts = {"photos": z_train,
               "identities": l2_normalize(np.stack([z_train[y_train == c].mean(0) for c in np.unique(y_train)]))}
    for cname, cohort in cohorts.items():
        for k in ks:
            mu, sd = cohort_stats(z_val, cohort, k)
            for method in ("z-mean", "as-norm"):
                name = f"{method}, cohort {cname}, k {k or 'all'}"
                res[name] = figures(z_val, labels, pairs, members, normalised(method, mu, sd))
                print(line(name, res[name]), flush=True)
    learner = e.verifier.learner
    x = learner.tensors(val.images)
    d = z_val.shape[1]
    halves = learner.config.get("model", {}).get("backbone") == "ensemble" and d % 2 == 0

    def unit(z: np.ndarray) -> np.ndarray:  # each ensemble member's part to unit length, as the model's cosine
        return np.concatenate([l2_normalize(z[:, :d // 2]), l2_normalize(z[:, d // 2:])], 1) if halves else l2_normalize(z)

    base = unit(e.embed(val.images))
    views: dict[str, np.ndarray] = {}
    for vname, view in VIEWS.items():
        with torch.no_grad():
            views[vname] = unit(torch.cat([embed_view(learner.model, x[i:i + 128], view)
                                           for i in range(0, len(x), 128)]).float().cpu().numpy())
        name = f"plain + {vname}"
        res[name] = figures(l2_normalize(base + views[vname]), labels, pairs, members)
        print(line(name, res[name]), flush=True)
    res["plain + every view"] = figures(l2_normalize(base + sum(views.values())), labels, pairs, members)
    print(line("plain + every view", res["plain + every view"]), flush=True)
    report["views"] = {k: {"dx": v[0], "dy": v[1], "scale": v[2], "degrees": v[3]} for k, v in VIEWS.items()}
    report["machine"] = {"cpu": bf.cpu_model(), "torch_threads": torch.get_num_threads()}
    write_json(a.out, report)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
