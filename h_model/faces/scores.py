"""Cosine scores of face embeddings and the decision threshold calibrated on them.

The one place the verifier, the gallery, pair evaluation and calibration take their numbers from:
L2 normalisation, cosine similarity (higher = more alike) and the lowest threshold that keeps the
false-accept rate of validation pairs at a target.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["l2_normalize", "cosine", "row_cosines", "calibrate_threshold"]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings (any shape, flattened)."""
    return float(l2_normalize(np.asarray(a).reshape(-1)) @ l2_normalize(np.asarray(b).reshape(-1)))


def row_cosines(z: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Cosine similarity of embedding rows ``z[i]`` and ``z[j]``, pair by pair."""
    z = l2_normalize(z)
    return np.einsum("nd,nd->n", z[i], z[j])


def calibrate_threshold(scores: Sequence[float] | np.ndarray, same: Sequence[bool] | np.ndarray,
                        far: float = 1e-3) -> float:
    """The lowest threshold whose false-accept rate on these validation pairs is at most ``far``.

    Decisions are ``score >= threshold``. With ``n`` impostor pairs at most ``floor(far * n)``
    of them may score at or above it; with fewer than ``1 / far`` impostors that is none, so the
    threshold sits just above the best impostor (the target FAR is not resolvable below ``1/n``).
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(same, dtype=bool).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if not 0.0 <= far < 1.0:
        raise ValueError("far must be in [0, 1)")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity")
    imp = np.sort(s[~y])[::-1]
    if imp.size == 0:
        raise ValueError("calibration needs impostor (different-person) pairs")
    allowed = int(np.floor(far * imp.size + 1e-9))
    return float(np.nextafter(imp[allowed], np.inf))
