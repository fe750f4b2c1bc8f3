"""What the gallery answers: enrollment results, persons, matches, identifications, and its errors."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelMismatchError", "DuplicatePhotoError", "EnrollResult", "PersonInfo", "Match", "Identification"]


class ModelMismatchError(ValueError):
    """Embeddings from one face model were offered to a gallery built with another."""


class DuplicatePhotoError(ValueError):
    """A photo already enrolled under one name was offered under another."""


@dataclass
class EnrollResult:
    name: str
    person_id: int
    added: int
    duplicates: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)


@dataclass
class PersonInfo:
    person_id: int
    name: str
    photos: int
    created: float


@dataclass
class Match:
    """One candidate person: ``score`` is the best cosine between the query and any of the person's
    photos (rounded to 6 decimals); matches are ranked by it and the threshold is compared with it."""

    name: str
    person_id: int
    score: float

    @property
    def similarity(self) -> float:
        """The same number as ``score`` (the cosine the threshold is compared with)."""
        return self.score


@dataclass
class Identification:
    matches: list[Match]
    unknown: bool
    threshold: float | None
    method: str

    @property
    def name(self) -> str | None:
        """The identified person, or None when unknown."""
        return None if self.unknown or not self.matches else self.matches[0].name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "unknown": self.unknown, "threshold": self.threshold, "method": self.method,
                "matches": [m.__dict__ for m in self.matches]}
