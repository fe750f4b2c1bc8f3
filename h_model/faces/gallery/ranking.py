"""Ranking the persons of a gallery for a query: by the best cosine over each person's photos.

A person's score is the highest cosine similarity between the query and any one of their
enrolled photos, rounded to ``SCORE_DECIMALS`` (6) decimals; persons are ranked by it, highest
first, ties broken by name (then by first appearance), and the open-set decision compares the
top score with the verification threshold.

Why this rule and not a prototype, a sum, or a softmax head over the gallery:

- It is the number the threshold was calibrated on (one photo against one photo), so the
  ranking, the reported score and the unknown/known decision are one number.
- It does not grow with the number of photos: a person enrolled with many photos gains nothing
  over one enrolled with few unless one of those photos really is nearer. A mean (prototype) or a
  softmax over all photos lets photo count or a few far-off photos move a person up or down, so
  a person with many photos could outrank the right one by count, and probabilities normalised
  over the gallery change whenever someone else is enrolled.
- A photo identical to an enrolled one scores exactly 1.0 (the rounding absorbs float32 noise)
  and wins, deterministically.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..scores import l2_normalize
from .results import Identification, Match

__all__ = ["SCORE_DECIMALS", "METHOD", "best_photo_scores", "rank", "decide"]

SCORE_DECIMALS = 6  # a cosine in float32 is good to about 1e-7: an identical photo scores exactly 1.0
METHOD = "best-photo-cosine"


def best_photo_scores(qn: np.ndarray, owners: Sequence[int], x: np.ndarray) -> tuple[list[int], np.ndarray]:
    """(persons in order of first appearance in ``owners``, each one's best cosine to the unit-length
    query ``qn`` over their rows of ``x``, clipped to [-1, 1] and rounded to ``SCORE_DECIMALS``)."""
    people = list(dict.fromkeys(int(o) for o in owners))
    col = {p: j for j, p in enumerate(people)}
    y = np.array([col[int(o)] for o in owners], dtype=np.int64)
    best = np.full(len(people), -np.inf, np.float64)
    np.maximum.at(best, y, (l2_normalize(x) @ qn).astype(np.float64))
    return people, np.round(np.clip(best, -1.0, 1.0), SCORE_DECIMALS)


def rank(people: Sequence[int], scores: np.ndarray, names: Mapping[int, str], k: int) -> list[Match]:
    """The top ``k`` persons, highest score first, ties by name (a stable sort: then first appearance)."""
    named = [names.get(p, "?") for p in people]
    best = sorted(range(len(people)), key=lambda j: (-scores[j], named[j]))[:k]
    return [Match(named[j], int(people[j]), float(scores[j])) for j in best]


def decide(matches: list[Match], threshold: float | None) -> Identification:
    """``unknown`` when the top score is below ``threshold`` (no open-set decision when None)."""
    unknown = threshold is not None and (not matches or matches[0].score < threshold)
    return Identification(matches, bool(unknown), threshold, METHOD)
