"""Verification figures and the decision threshold of a face checkpoint, from labelled aligned crops.

Training on ``--dataset faces`` ends here: the threshold is calibrated on validation-identity
pairs at the target false-accept rate and stored in the checkpoint's ``config.json``; the
test-identity pairs give the 10-fold accuracy, ROC AUC and TAR at fixed FARs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.imageset import ImageSet
from ..evaluate import embed_all
from ..models import FewShotModel
from .pairs import pair_metrics
from .verifier import calibrate_threshold, l2_normalize, save_threshold


def label_pairs(labels: np.ndarray | torch.Tensor, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to ``n`` distinct matched and ``n`` distinct mismatched index pairs ``(i, j, same)``, by seed."""
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)]
    multi = [g for g in groups if len(g) >= 2]
    if not multi or len(groups) < 2:
        raise ValueError("pairs need at least one identity with two photos and two identities")
    capacity = sum(len(g) * (len(g) - 1) // 2 for g in multi)
    matched: set[tuple[int, int]] = set()
    while len(matched) < min(n, capacity):
        g = multi[rng.integers(len(multi))]
        a, b = sorted(rng.choice(g, 2, replace=False).tolist())
        matched.add((a, b))
    sizes = np.array([len(g) for g in groups])
    mism_capacity = int((sizes.sum() ** 2 - (sizes ** 2).sum()) // 2)
    mism: set[tuple[int, int]] = set()
    while len(mism) < min(n, mism_capacity):
        a, b = rng.integers(len(y), size=2)
        if y[a] != y[b]:
            mism.add((int(min(a, b)), int(max(a, b))))
    pairs = sorted(matched) + sorted(mism)
    i, j = (np.array(v, dtype=np.int64) for v in zip(*pairs))
    return i, j, np.r_[np.ones(len(matched), bool), np.zeros(len(mism), bool)]


def pair_scores(z: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Cosine similarity of embedding rows ``i`` and ``j``."""
    z = l2_normalize(z)
    return np.einsum("nd,nd->n", z[i], z[j])


def _ten_fold(scores: np.ndarray, same: np.ndarray, seed: int) -> dict[str, Any]:
    return pair_metrics(scores, same, np.random.default_rng(seed).permutation(len(scores)) % 10)


@torch.inference_mode()
def verification_report(model: FewShotModel, val_set: ImageSet, test_set: ImageSet, device: str | torch.device,
                        far: float = 1e-3, pairs: int = 3000, seed: int = 0,
                        test_embeddings: torch.Tensor | None = None) -> dict[str, Any]:
    """Threshold at ``far`` on validation pairs; 10-fold metrics on test pairs; both embedded in eval mode
    (``test_embeddings``: the test set's, when already computed). ``validation`` holds the same
    10-fold metrics on the validation pairs: the figures to choose models by."""
    zv = embed_all(model, val_set, device).float().cpu().numpy()
    i, j, same = label_pairs(val_set.labels, pairs, seed)
    val_scores = pair_scores(zv, i, j)
    threshold = calibrate_threshold(val_scores, same, far)
    mv = _ten_fold(val_scores, same, seed)
    zt = (embed_all(model, test_set, device) if test_embeddings is None else test_embeddings).float().cpu().numpy()
    i, j, same = label_pairs(test_set.labels, pairs, seed + 1)
    scores = pair_scores(zt, i, j)
    m = _ten_fold(scores, same, seed)
    return {"threshold": threshold, "far": far, "val_pairs": int(len(val_scores)), "test_pairs": int(len(scores)),
            "accuracy": m["accuracy_mean"], "accuracy_std": m["accuracy_std"], "auc": m["auc"],
            "tar_at_far": m["tar_at_far"],
            "accuracy_at_threshold": float(np.mean((scores >= threshold) == same)),
            "validation": {"accuracy": mv["accuracy_mean"], "accuracy_std": mv["accuracy_std"], "auc": mv["auc"],
                           "tar_at_far": {k: v["tar"] for k, v in mv["tar_at_far"].items()}}}


def calibrate_checkpoint(run_dir: str | Path, model: FewShotModel, val_set: ImageSet, test_set: ImageSet,
                         device: str | torch.device, far: float = 1e-3, margin: float = 0.2,
                         alignment: str = "eyes", test_embeddings: torch.Tensor | None = None) -> dict[str, Any]:
    """:func:`verification_report`, with the threshold and crop settings written into the checkpoint."""
    report = verification_report(model, val_set, test_set, device, far, test_embeddings=test_embeddings)
    extra = {} if alignment == "eyes" else {"alignment": alignment}
    save_threshold(run_dir, report["threshold"], far, crop_size=int(val_set.preprocess.size[0]), margin=margin, **extra,
                   test_accuracy=report["accuracy"],
                   test_tar_at_far={k: v["tar"] for k, v in report["tar_at_far"].items()})
    return report
