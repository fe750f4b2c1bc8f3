"""A durable face gallery: SQLite is the source of truth, FAISS a rebuildable search index.

Directory layout::

    gallery.sqlite   persons, per-photo embeddings (float32), image SHA-256, source file name,
                     time, embedding model id; WAL mode, one transaction per operation
    index.npz        the FAISS index (serialised bytes + header + the ids removed from an HNSW
                     graph), written atomically; rebuilt from SQLite whenever it is missing,
                     corrupt, stale (generation counter, count and a hash of the embedding ids
                     disagree with the database) or of another kind than the settings ask for

Identification is open-set few-shot classification with the gallery as the support set: FAISS
(exact inner product over normalised embeddings; above ``exact_limit`` embeddings an HNSW graph,
or IVF lists with ``approx="ivf"``) narrows a large gallery to ``candidates`` persons, then each
of those persons is scored exactly by the best cosine between the query and any of their photos
(:mod:`.ranking`): the score the verification threshold was calibrated on, so the ranking, the
reported score and the open-set decision are one number. A query is ``unknown`` when the top
score is below the threshold.

A photo (by SHA-256) belongs to one person: offered under another name, it is refused (or
skipped) with that person's name, unless ``allow_shared_photos``.

Thread-safe: each thread gets its own SQLite connection; one lock serialises writes and FAISS.
Another process writing the same gallery bumps the generation, and this one rebuilds its index.

The parts: :mod:`.store` (SQLite), :mod:`.index` (the FAISS index's lifecycle),
:mod:`.enrollment` (the one insert routine), :mod:`.ranking`, :mod:`.transfer` (export/import);
:class:`Gallery` puts them together.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ...preprocess import ImageInput
from ..scores import l2_normalize
from . import enrollment, ranking
from .index import INDEX_NAME, FaissIndex, IndexSettings
from .results import DuplicatePhotoError, EnrollResult, Identification, Match, ModelMismatchError, PersonInfo
from .store import DB_NAME, FORMAT, Store
from .transfer import read_export, write_export

if TYPE_CHECKING:
    from ..verifier import FaceVerifier

__all__ = ["Gallery", "Match", "Identification", "EnrollResult", "PersonInfo", "ModelMismatchError",
           "DuplicatePhotoError", "FORMAT", "DB_NAME", "INDEX_NAME"]


def _setting(name: str) -> property:
    """A gallery attribute that reads and sets the index's setting of that name."""
    return property(lambda self: getattr(self.index.settings, name),
                    lambda self, value: setattr(self.index.settings, name, value),
                    doc=f"The index setting ``{name}`` (see :class:`Gallery`).")


class Gallery:
    """Open (or create) a gallery directory.

    ``model_id`` names the embedding model (``FaceVerifier.model_id``); a new gallery needs one
    (or a ``verifier``), an existing one refuses another. ``threshold`` (default: the verifier's)
    is the open-set cosine threshold. ``exact_limit``: above this many embeddings the index is
    approximate instead of exact: ``approx="hnsw"`` (default; a graph with ``hnsw_m`` links per
    vector built with ``ef_construction`` candidates, ``ef_search`` kept per query, at least
    ``8 * candidates``; a removed embedding stays in the graph as a filtered-out id until more than
    ``max_removed`` of it is removed, then the graph is rebuilt)
    or ``approx="ivf"`` (``nprobe`` of about ``4 sqrt(n)`` lists searched; exact removal).
    ``candidates``: persons scored exactly once the index has narrowed a gallery larger than that.
    ``allow_shared_photos``: let one photo be enrolled under several names (refused by default).
    :meth:`enroll_many` adds many persons at once. ``store`` and ``index`` are the SQLite store and
    the FAISS index behind it.
    """

    exact_limit = _setting("exact_limit")
    nprobe = _setting("nprobe")
    approx = _setting("approx")
    hnsw_m = _setting("hnsw_m")
    ef_construction = _setting("ef_construction")
    ef_search = _setting("ef_search")
    max_removed = _setting("max_removed")

    def __init__(self, path: str | Path, model_id: str | None = None, verifier: "FaceVerifier | None" = None,
                 threshold: float | None = None, exact_limit: int = 50_000, nprobe: int = 16,
                 candidates: int = 32, approx: str = "hnsw", hnsw_m: int = 32, ef_construction: int = 100,
                 ef_search: int = 128, max_removed: float = 0.1, allow_shared_photos: bool = False) -> None:
        settings = IndexSettings(int(exact_limit), int(nprobe), approx, int(hnsw_m), int(ef_construction),
                                 int(ef_search), float(max_removed))
        self.path = Path(path).expanduser()
        self.path.mkdir(parents=True, exist_ok=True)
        self.verifier = verifier
        if verifier is not None and model_id is not None and model_id != verifier.model_id:
            raise ModelMismatchError(f"model_id {model_id!r} is not the verifier's {verifier.model_id!r}")
        self.threshold = threshold if threshold is not None else (verifier.threshold if verifier else None)
        self.candidates = int(candidates)
        self.allow_shared_photos = bool(allow_shared_photos)
        self._lock = threading.RLock()
        self._changed = False
        self.store = Store(self.path)
        self.index = FaissIndex(self.path, self.store, settings, self._lock)
        self.index.cleanup_temp_files()
        self.model_id = self.store.open(model_id or (verifier.model_id if verifier else None))

    @contextmanager
    def _write(self) -> Iterator[tuple[Any, enrollment.Updates]]:
        """One write transaction; index updates queued in the yielded list run only after COMMIT,
        so a rolled-back write never touches the in-memory index."""
        with self._lock:
            updates: enrollment.Updates = []
            with self.store.transaction() as tx:
                self.index.follow(tx.start)
                yield tx.con, updates
            self._changed = True
            self.index.apply(updates, tx.generation)

    def close(self) -> None:
        """Bring the index file up to date if this object wrote, and close every connection."""
        with self._lock:
            if self._changed and self.store.is_open:
                self.flush()
            self.store.close()

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def flush(self) -> None:
        """Write the index file now if it is behind (also done on close and after each rebuild)."""
        self.index.flush()

    @property
    def index_kind(self) -> str:
        """The FAISS index class in use ("IndexIDMap" exact, "IndexHNSWFlat", "IndexIVFFlat"), or "empty"."""
        return self.index.kind_name

    @property
    def dim(self) -> int | None:
        return self.store.dim

    # -- writes ------------------------------------------------------------------------------
    def enroll(self, name: str, photos: Sequence[ImageInput] | None = None, embeddings: np.ndarray | None = None,
               model_id: str | None = None, sources: Sequence[str | None] | None = None,
               sha256s: Sequence[str | None] | None = None, skip_failures: bool = False) -> EnrollResult:
        """Add a person (or more photos of one) in a single transaction.

        ``photos`` need the gallery's ``verifier`` (embedded with ``normalize=False`` so the
        model's own embedding scale is stored); ``embeddings`` must come from ``model_id`` (checked when
        given). A photo whose SHA-256 is already enrolled for the person is counted as a duplicate;
        one enrolled for another person raises :class:`DuplicatePhotoError` naming them (unless the
        gallery allows shared photos). ``skip_failures``: photos without a face, undecodable or
        enrolled for another person are skipped and listed, not fatal.
        """
        name = str(name).strip()
        if not name:
            raise ValueError("a person needs a non-empty name")
        if (photos is None) == (embeddings is None):
            raise ValueError("give either photos or embeddings")
        skipped: list[tuple[str, str]] = []
        if photos is not None:
            if self.verifier is None:
                raise ValueError("enrolling photos needs Gallery(..., verifier=FaceVerifier)")
            z, shas, srcs, skipped = enrollment.embed_photos(self.verifier, photos, sources, name, skip_failures)
            if z is None:
                return EnrollResult(name, -1, 0, 0, skipped)
            x = self.store.check(z, self.verifier.model_id)
        else:
            x = self.store.check(embeddings, model_id)
            srcs = list(sources) if sources is not None else [None] * len(x)
            shas = list(sha256s) if sha256s is not None else [None] * len(x)
        if len(srcs) != len(x) or len(shas) != len(x):
            raise ValueError("sources/sha256s need one entry per embedding")
        with self._write() as (con, updates):
            self.store.claim_dim(con, x.shape[1])
            keep = list(range(len(x)))
            if not self.allow_shared_photos:
                keep, refused = enrollment.refuse_shared(self.store, con, name, shas, srcs, skip_failures)
                skipped += refused
            if not keep:
                return EnrollResult(name, -1, 0, 0, skipped)
            pid, added = enrollment.insert(self.store, con, updates, [name] * len(keep), x[keep],
                                           [shas[i] for i in keep], [srcs[i] for i in keep])
        return EnrollResult(name, int(pid[name]), int(added.sum()), len(keep) - int(added.sum()), skipped)

    def enroll_many(self, people: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
                    model_id: str | None = None) -> dict[str, int]:
        """Add embeddings of many persons in one transaction (bulk imports, large galleries).

        ``people``: name -> ``[n, d]`` (or ``[d]``) embeddings from ``model_id`` (checked when
        given); a name already enrolled gets the new embeddings added. Like :meth:`enroll` with
        ``embeddings=``, photo-less embeddings are not checked for duplicates. Returns the counts.
        """
        items = list(people.items() if isinstance(people, Mapping) else people)
        if not items:
            return {"persons": 0, "added": 0}
        names = [str(n).strip() for n, _ in items]
        if not all(names):
            raise ValueError("a person needs a non-empty name")
        parts = [np.asarray(v, dtype=np.float32).reshape(-1, np.shape(v)[-1]) for _, v in items]
        x = self.store.check(np.concatenate(parts), model_id)
        owners = [n for n, part in zip(names, parts) for _ in range(len(part))]
        with self._write() as (con, updates):
            pid, added = enrollment.insert(self.store, con, updates, owners, x)
        return {"persons": len(pid), "added": int(added.sum())}

    def remove(self, name: str) -> bool:
        """Delete a person and all their embeddings; False when there is no such person."""
        with self._write() as (con, updates):
            ids = self.store.remove_person(con, name)
            if ids is None:
                return False
            if len(ids):
                updates.append(lambda index: index.remove(ids))
        return True

    def rename(self, old: str, new: str) -> None:
        new = str(new).strip()
        if not new:
            raise ValueError("a person needs a non-empty name")
        with self._write() as (con, _):
            self.store.rename_person(con, old, new)

    # -- reads -------------------------------------------------------------------------------
    def list(self) -> list[PersonInfo]:
        return self.store.persons()

    def __len__(self) -> int:
        return self.store.count_persons()

    def embeddings(self, name: str) -> np.ndarray:
        """A person's enrolled embeddings ``[n, d]`` as stored."""
        rows = self.store.vectors_of_name(name)
        if not rows:
            raise KeyError(f"no person named {name!r}")
        return np.stack([np.frombuffer(r, np.float32) for r in rows])

    def identify(self, query: np.ndarray | ImageInput, k: int = 5, threshold: float | None = None,
                 verifier: "FaceVerifier | None" = None) -> Identification:
        """Top-``k`` persons for a query: a 1-D embedding, or a photo (needs a verifier).

        Each person's score is the best cosine between the query and any of their photos
        (``method='best-photo-cosine'``, :mod:`.ranking`); matches come highest score first (ties
        by name). ``unknown`` when the top score is below ``threshold`` (default: the gallery's,
        the verifier's calibrated one; no open-set decision when None).
        """
        verifier = verifier or self.verifier
        same_model = verifier is None or verifier.model_id == self.model_id
        mismatch = f"verifier model {verifier.model_id if verifier else None} is not the gallery's {self.model_id}"
        if isinstance(query, np.ndarray) and query.ndim == 1 and np.issubdtype(query.dtype, np.floating):
            q = self.store.check(query, None)[0]
        elif verifier is None:
            raise ValueError("identifying a photo needs a verifier")
        elif same_model:
            q = self.store.check(verifier.embed([query], normalize=False)[0], None)[0]
        if not same_model:
            raise ModelMismatchError(mismatch)
        threshold = self.threshold if threshold is None else threshold
        qn = l2_normalize(q)
        rows = self._candidate_rows(qn)
        if not rows:
            raise ValueError("the gallery is empty")
        people, scores = ranking.best_photo_scores(qn, [r[0] for r in rows],
                                                   np.stack([np.frombuffer(r[1], np.float32) for r in rows]))
        return ranking.decide(ranking.rank(people, scores, self.store.names(people), k), threshold)

    def _candidate_rows(self, qn: np.ndarray) -> list[tuple[int, bytes]]:
        """(person id, embedding) of every photo of the persons to score: all of them, or in a gallery
        of more than ``candidates`` persons the first ``candidates`` the index finds near ``qn``."""
        n_persons = self.store.count_persons(at_most=self.candidates + 1)
        if n_persons == 0:
            raise ValueError("the gallery is empty")
        with self._lock:
            self.index.sync()
            found = None
            if n_persons > self.candidates and self.index.faiss is not None:
                kk = int(min(self.index.faiss.ntotal, max(8 * self.candidates, 64)))
                found = [int(i) for i in self.index.search(qn[None], kk)[0] if i >= 0]
        if found is None:
            return self.store.vectors()
        return self.store.vectors(self.store.first_persons(found, self.candidates))

    # -- export / import ---------------------------------------------------------------------
    def export(self, path: str | Path) -> Path:
        """Write every person's embeddings to ``.json`` or ``.npz`` (no pickle), atomically."""
        return write_export(path, self.store.all_rows(), self.model_id, self.dim)

    def import_from(self, path: str | Path) -> dict[str, int]:
        """Merge an export (same model id only) in one transaction; what is already there is skipped."""
        rows = read_export(path, self.model_id)
        if not rows:
            return {"persons": 0, "added": 0, "duplicates": 0}
        by_name: dict[str, list[Any]] = {}
        for row in rows:  # person by person, each person's rows in file order
            by_name.setdefault(row[0], []).append(row)
        rows = [row for group in by_name.values() for row in group]
        x = self.store.check(np.stack([np.asarray(r[1], np.float32) for r in rows]), None)
        with self._write() as (con, updates):
            _, added = enrollment.insert(self.store, con, updates, [r[0] for r in rows], x, [r[2] for r in rows],
                                         [r[3] for r in rows], [r[4] for r in rows], match_by_value=True)
        return {"persons": len(by_name), "added": int(added.sum()), "duplicates": len(rows) - int(added.sum())}
