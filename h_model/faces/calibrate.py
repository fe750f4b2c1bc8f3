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
from .pairs import label_pairs, pair_metrics
from .scores import calibrate_threshold, row_cosines
from .verifier import save_threshold


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
    val_scores = row_cosines(zv, i, j)
    threshold = calibrate_threshold(val_scores, same, far)
    mv = _ten_fold(val_scores, same, seed)
    zt = (embed_all(model, test_set, device) if test_embeddings is None else test_embeddings).float().cpu().numpy()
    i, j, same = label_pairs(test_set.labels, pairs, seed + 1)
    scores = row_cosines(zt, i, j)
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
