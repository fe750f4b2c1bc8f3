"""face_score_options' cohort statistics and normalised scores, on hand-made numbers."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from face_score_options import cohort_stats, normalised  # noqa: E402


def test_cohort_stats_take_the_k_highest_cosines() -> None:
    z = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    cohort = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], np.float32)  # cosines: row 0 -> 1, .6, 0; row 1 -> 0, .8, 1
    mu, sd = cohort_stats(z, cohort, 2)
    np.testing.assert_allclose(mu, [0.8, 0.9], atol=1e-6)
    np.testing.assert_allclose(sd, [0.2, 0.1], atol=1e-6)
    mu_all, _ = cohort_stats(z, cohort, 0)
    np.testing.assert_allclose(mu_all, [1.6 / 3, 1.8 / 3], atol=1e-6)


def test_normalised_scores() -> None:
    mu, sd = np.array([0.2, 0.4]), np.array([0.1, 0.2])
    i, j, s = np.array([0]), np.array([1]), np.array([0.7])
    assert normalised("z-mean", mu, sd)(s, i, j) == pytest.approx([0.4])
    assert normalised("as-norm", mu, sd)(s, i, j) == pytest.approx([0.5 * (5.0 + 1.5)])
    with pytest.raises(ValueError):
        normalised("t-norm", mu, sd)
