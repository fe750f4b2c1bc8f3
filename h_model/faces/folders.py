"""A folder of people, ``ROOT/<person>/<photos>``, and enrolling it into a gallery."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ..data.folder import IMAGE_EXTS

if TYPE_CHECKING:
    from .gallery import Gallery

__all__ = ["person_folders", "enroll_folder"]


def person_folders(root: str | Path) -> Iterator[tuple[str, list[Path]]]:
    """Each ``root/<person>`` folder (by name) with its image files (by name); files directly under
    ``root`` and folders without images are left out. One folder is listed at a time."""
    root = Path(root)
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        photos = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
        if photos:
            yield folder.name, photos


def enroll_folder(gallery: "Gallery", root: str | Path) -> dict[str, Any]:
    """Enroll every person of ``root`` (the folder's name) from their photos, skipping the unusable
    ones (``source`` of each photo: ``<person>/<file>``). Returns the counts and what was skipped."""
    summary: dict[str, Any] = {"persons": 0, "added": 0, "duplicates": 0, "skipped": []}
    for name, photos in person_folders(root):
        r = gallery.enroll(name, photos, sources=[f"{name}/{f.name}" for f in photos], skip_failures=True)
        summary["persons"] += r.added > 0 or r.duplicates > 0
        summary["added"] += r.added
        summary["duplicates"] += r.duplicates
        summary["skipped"] += [{"file": s, "reason": why} for s, why in r.skipped]
    return summary
