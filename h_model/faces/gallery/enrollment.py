"""Putting embeddings into a gallery: one insert routine behind every way in (photos, embeddings,
bulk, imports), the photos' embedding, and the rule that a photo belongs to one person.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ...preprocess import ImageDecodeError, ImageInput
from ..detect import NoFaceError, image_sha256
from .results import DuplicatePhotoError
from .store import Store

if TYPE_CHECKING:
    from ..verifier import FaceVerifier
    from .index import FaissIndex

__all__ = ["insert", "embed_photos", "refuse_shared"]

Updates = list[Callable[["FaissIndex"], None]]


def insert(store: Store, con, updates: Updates, names: Sequence[str], x: np.ndarray,
           shas: Sequence[str | None] | None = None, sources: Sequence[str | None] | None = None,
           created: Sequence[float | None] | None = None, match_by_value: bool = False
           ) -> tuple[dict[str, int], np.ndarray]:
    """Inside a write transaction: store row ``i`` of ``x`` (checked ``[n, d]``) as a photo of
    ``names[i]``, adding persons not enrolled yet; queue the new embeddings for the index.

    A row whose photo (SHA-256) the person already has is left out (and, with ``match_by_value``,
    a photo-less row equal to one of theirs). Returns ({name: person id}, a mask of the rows added).
    """
    n = len(x)
    shas = list(shas) if shas is not None else [None] * n
    sources = list(sources) if sources is not None else [None] * n
    now = time.time()
    created = [now if c is None else c for c in created] if created is not None else [now] * n
    if not len(names) == len(shas) == len(sources) == len(created) == n:
        raise ValueError("sources/sha256s need one entry per embedding")
    store.claim_dim(con, x.shape[1])
    pid = store.person_ids(con, names, now)
    owners = np.array([pid[name] for name in names], dtype=np.int64)
    ids, added = store.insert_embeddings(con, owners, x, shas, sources, created, match_by_value)
    if len(ids):
        new = x[added]
        updates.append(lambda index: index.add(new, ids))
    return pid, added


def embed_photos(verifier: "FaceVerifier", photos: Sequence[ImageInput], sources: Sequence[str | None] | None,
                 name: str, skip_failures: bool
                 ) -> tuple[np.ndarray | None, list[str | None], list[str | None], list[tuple[str, str]]]:
    """Embed a person's photos (``normalize=False``: the model's own scale is stored): (embeddings of
    the usable ones or None, their SHA-256s, their sources, the (source, reason) of the skipped).
    Without ``skip_failures`` the first unusable photo raises ImageDecodeError or NoFaceError."""
    photos = list(photos)
    srcs = list(sources) if sources is not None else [
        Path(p).name if isinstance(p, (str, Path)) else None for p in photos]
    z, reasons = verifier.embed_each(photos, normalize=False)
    bad = [(i, r) for i, r in enumerate(reasons) if r is not None]
    if bad and not skip_failures:
        i, r = bad[0]
        err = ImageDecodeError if r.startswith("ImageDecodeError") else NoFaceError
        raise err(f"photo #{i} ({srcs[i] or 'in memory'}) of {name!r}: {r}")
    skipped = [(str(srcs[i] or f"#{i}"), r) for i, r in bad]
    ok = [i for i, r in enumerate(reasons) if r is None]
    if not ok:
        return None, [], [], skipped
    return z, [image_sha256(photos[i]) for i in ok], [srcs[i] for i in ok], skipped


def refuse_shared(store: Store, con, name: str, shas: Sequence[str | None], sources: Sequence[str | None],
                  skip_failures: bool) -> tuple[list[int], list[tuple[str, str]]]:
    """Inside a write transaction: the rows whose photo is not enrolled under another name, and the
    (source, reason) of the others; without ``skip_failures`` the first such photo raises
    :class:`DuplicatePhotoError` naming its person."""
    owners = store.photo_owners(con, shas, name)
    keep, skipped = [], []
    for i, sha in enumerate(shas):
        if sha not in owners:
            keep.append(i)
            continue
        why = f"this photo is already enrolled as {owners[sha]!r}"
        if not skip_failures:
            raise DuplicatePhotoError(f"{sources[i] or f'photo #{i}'}: {why}")
        skipped.append((str(sources[i] or f"#{i}"), why))
    return keep, skipped
