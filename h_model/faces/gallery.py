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
of those persons is scored exactly by the best cosine between the query and any of their photos:
the score the verification threshold was calibrated on, so the ranking, the reported score and
the open-set decision are one number. A photo identical to an enrolled one scores 1.0 and wins.
A query is ``unknown`` when the top score is below the threshold.

A photo (by SHA-256) belongs to one person: offered under another name, it is refused (or
skipped) with that person's name, unless ``allow_shared_photos``.

Thread-safe: each thread gets its own SQLite connection; one lock serialises writes and FAISS.
Another process writing the same gallery bumps the generation, and this one rebuilds its index.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

import faiss
import numpy as np

from ..checkpoint import atomic_write
from ..preprocess import ImageDecodeError, ImageInput
from .detect import NoFaceError, image_sha256
from .verifier import l2_normalize

if TYPE_CHECKING:
    from .verifier import FaceVerifier

__all__ = ["Gallery", "Match", "Identification", "EnrollResult", "PersonInfo", "ModelMismatchError",
           "DuplicatePhotoError"]

FORMAT = "h_model.faces.gallery/1"
DB_NAME, INDEX_NAME = "gallery.sqlite", "index.npz"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS persons(
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS embeddings(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    person_id INTEGER NOT NULL REFERENCES persons(id) ON DELETE CASCADE,
    vector BLOB NOT NULL, sha256 TEXT, source TEXT, created REAL NOT NULL, model_id TEXT NOT NULL,
    UNIQUE(person_id, sha256));
CREATE INDEX IF NOT EXISTS embeddings_person ON embeddings(person_id);
CREATE INDEX IF NOT EXISTS embeddings_sha256 ON embeddings(sha256);
"""
SCORE_DECIMALS = 6  # a cosine in float32 is good to about 1e-7: an identical photo scores exactly 1.0


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


def _ids_hash(ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()


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
    :meth:`enroll_many` adds many persons at once.
    """

    def __init__(self, path: str | Path, model_id: str | None = None, verifier: "FaceVerifier | None" = None,
                 threshold: float | None = None, exact_limit: int = 50_000, nprobe: int = 16,
                 candidates: int = 32, approx: str = "hnsw", hnsw_m: int = 32, ef_construction: int = 100,
                 ef_search: int = 128, max_removed: float = 0.1, allow_shared_photos: bool = False) -> None:
        if approx not in ("hnsw", "ivf"):
            raise ValueError(f"approx must be 'hnsw' or 'ivf', not {approx!r}")
        self.path = Path(path).expanduser()
        self.path.mkdir(parents=True, exist_ok=True)
        self.verifier = verifier
        if verifier is not None and model_id is not None and model_id != verifier.model_id:
            raise ModelMismatchError(f"model_id {model_id!r} is not the verifier's {verifier.model_id!r}")
        self.threshold = threshold if threshold is not None else (verifier.threshold if verifier else None)
        self.exact_limit, self.nprobe, self.candidates = int(exact_limit), int(nprobe), int(candidates)
        self.approx, self.hnsw_m, self.ef_construction = approx, int(hnsw_m), int(ef_construction)
        self.ef_search, self.max_removed = int(ef_search), float(max_removed)
        self.allow_shared_photos = bool(allow_shared_photos)
        self._removed: set[int] = set()  # ids still in an HNSW graph but no longer in the database
        self._removed_sel: Any = None
        self._lock = threading.RLock()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._index: Any = None
        self._gen = -1
        self._dirty = self._changed = False
        self._cleanup_temp_files()
        con = self._con()
        con.executescript(SCHEMA)
        meta = self._meta(con)
        wanted = model_id or (verifier.model_id if verifier else None)
        if "model_id" in meta:
            if wanted is not None and wanted != meta["model_id"]:
                persons = con.execute("SELECT COUNT(*) FROM persons").fetchone()[0]
                raise ModelMismatchError(
                    f"gallery {self.path} holds the embeddings of {persons} person(s) made by face model "
                    f"{meta['model_id']}, not by this one ({wanted}); embeddings of two models cannot be "
                    "compared, so they are never mixed. Either open it with the model it was built with "
                    "(--model / FaceVerifier.load(THAT_CHECKPOINT)), or start a new gallery and enroll the "
                    "persons again from their photos with this model (python -m h_model.faces enroll-dir "
                    "PHOTOS --gallery NEW_GALLERY). A gallery keeps embeddings and thumbnails, not photos, "
                    "so it cannot re-embed itself; `python -m h_model.faces list --gallery OLD` names who to enroll.")
            self.model_id = meta["model_id"]
        else:
            if wanted is None:
                raise ValueError(f"{self.path} is a new gallery: pass model_id=... or verifier=...")
            with self._write() as (c, _):
                c.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?), ('model_id', ?), ('generation', '0')",
                          (FORMAT, wanted))
            self.model_id = self._meta(con)["model_id"]
            if self.model_id != wanted:  # another process created it first with another model
                raise ModelMismatchError(f"gallery {self.path} was just created for model {self.model_id}")

    # -- connections and transactions ---------------------------------------------------------
    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path / DB_NAME, timeout=60, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA foreign_keys=ON")
            self._local.con = con
            with self._lock:
                self._connections.append(con)
        return con

    @staticmethod
    def _meta(con: sqlite3.Connection) -> dict[str, str]:
        return dict(con.execute("SELECT key, value FROM meta").fetchall())

    @staticmethod
    def _generation(con: sqlite3.Connection) -> int:
        row = con.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(row[0]) if row else 0

    @contextmanager
    def _write(self) -> Iterator[tuple[sqlite3.Connection, list[Callable[[Any], None]]]]:
        """One IMMEDIATE transaction that bumps the generation. Index updates queued in the yielded
        list run only after COMMIT, so a rolled-back write never touches the in-memory index."""
        con = self._con()
        with self._lock:
            after: list[Callable[[Any], None]] = []
            con.execute("BEGIN IMMEDIATE")
            try:
                if self._generation(con) != self._gen:
                    self._index = None  # another process wrote: rebuild lazily
                yield con, after
                con.execute("INSERT INTO meta VALUES ('generation', '1') ON CONFLICT(key) DO UPDATE "
                            "SET value = CAST(value AS INTEGER) + 1")
                gen = self._generation(con)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            self._changed = True
            if self._index is not None:
                try:
                    for update in after:
                        update(self._index)
                    self._gen, self._dirty = gen, True
                except RuntimeError:
                    self._index = None

    def close(self) -> None:
        """Bring the index file up to date if this object wrote, and close every connection."""
        with self._lock:
            if self._changed and self._connections:
                self.flush()
            for con in self._connections:
                con.close()
            self._connections.clear()
            self._local = threading.local()

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the FAISS index ---------------------------------------------------------------------
    def _kind_for(self, n: int) -> str:
        """The index kind these settings ask for at ``n`` embeddings: 'flat', 'hnsw' or 'ivf'."""
        return "flat" if n <= self.exact_limit else self.approx

    @staticmethod
    def _kind_of(index: Any) -> str:
        if isinstance(index, faiss.IndexIVF):
            return "ivf"
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
        return "hnsw" if isinstance(inner, faiss.IndexHNSW) else "flat"

    def _new_index(self, x: np.ndarray, d: int) -> Any:
        kind = self._kind_for(len(x))
        if kind == "flat":
            return faiss.index_factory(d, "IDMap,Flat", faiss.METRIC_INNER_PRODUCT)
        if kind == "hnsw":
            graph = faiss.IndexHNSWFlat(d, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = self.ef_construction
            graph.hnsw.efSearch = self.ef_search
            return faiss.IndexIDMap(graph)
        n = len(x)
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
        index = faiss.index_factory(d, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.nprobe = self.nprobe
        return index

    def _set_removed(self, removed: Iterable[int]) -> None:
        self._removed = {int(i) for i in removed}
        self._removed_sel = None

    def _search(self, q: np.ndarray, k: int) -> np.ndarray:
        """Ids of the ``k`` nearest stored embeddings of each normalised query row (caller holds the lock)."""
        params = None
        if self._kind_of(self._index) == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(self.ef_search, k)
            if self._removed:
                if self._removed_sel is None:  # built once per change of the removed set
                    dead = np.fromiter(self._removed, dtype=np.int64, count=len(self._removed))
                    self._removed_sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(dead))
                params.sel = self._removed_sel
        _, found = self._index.search(np.ascontiguousarray(q, dtype=np.float32), k, params=params)
        return found

    def _db_state(self, con: sqlite3.Connection) -> tuple[int, np.ndarray]:
        gen = self._generation(con)
        ids = np.array([r[0] for r in con.execute("SELECT id FROM embeddings ORDER BY id")], dtype=np.int64)
        return gen, ids

    def _rebuild(self, con: sqlite3.Connection) -> None:
        id_parts, x_parts = [], []
        con.execute("BEGIN")  # one consistent snapshot
        try:
            gen, d = self._generation(con), self.dim
            cur = con.execute("SELECT id, vector FROM embeddings ORDER BY id")
            while rows := cur.fetchmany(65536):  # in chunks: a million rows as Python objects is gigabytes
                id_parts.append(np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)))
                x_parts.append(np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1))
        finally:
            con.execute("COMMIT")
        self._set_removed(())
        if d is None:
            self._index, self._gen = None, gen
            return
        ids = np.concatenate(id_parts) if id_parts else np.zeros(0, np.int64)
        x = l2_normalize(np.concatenate(x_parts)) if x_parts else np.zeros((0, d), np.float32)
        del x_parts
        index = self._new_index(x, d)
        if len(x):
            index.add_with_ids(x, ids)
        self._index, self._gen = index, gen
        self._save_index()

    def _load_index(self, con: sqlite3.Connection) -> bool:
        """Adopt index.npz if it matches the database exactly; False when missing/stale/corrupt."""
        p = self.path / INDEX_NAME
        if not p.is_file():
            return False
        try:
            with np.load(p, allow_pickle=False) as z:
                head = json.loads(bytes(z["meta"]).decode())
                raw = z["faiss"]
                removed = z["removed"] if "removed" in z.files else np.zeros(0, np.int64)
            if head.get("sha256") != hashlib.sha256(raw.tobytes()).hexdigest():
                return False
            gen, ids = self._db_state(con)
            if (head.get("generation"), head.get("count"), head.get("ids"), head.get("model_id")) != \
                    (gen, len(ids), _ids_hash(ids), self.model_id):
                return False
            index = faiss.deserialize_index(raw)
            kind = self._kind_of(index)
            if index.ntotal != len(ids) + len(removed) or (len(removed) and kind != "hnsw") \
                    or kind != self._kind_for(len(ids)):
                return False  # stale, or the settings now ask for another kind of index
        except (OSError, ValueError, KeyError, RuntimeError, json.JSONDecodeError):
            return False
        if kind == "ivf":
            index.nprobe = self.nprobe
        elif kind == "hnsw":
            faiss.downcast_index(index.index).hnsw.efSearch = self.ef_search
        self._set_removed(removed)
        self._index, self._gen, self._dirty = index, gen, False
        return True

    def _save_index(self) -> None:
        con = self._con()
        gen, ids = self._db_state(con)
        if gen != self._gen or self._index is None or self._index.ntotal != len(ids) + len(self._removed):
            return  # the database moved on: a stale file would only be rebuilt
        raw = faiss.serialize_index(self._index)
        removed = np.array(sorted(self._removed), dtype=np.int64)
        head = {"format": FORMAT, "generation": gen, "count": int(len(ids)), "ids": _ids_hash(ids),
                "model_id": self.model_id, "sha256": hashlib.sha256(raw.tobytes()).hexdigest(),
                "kind": type(self._index).__name__, "removed": int(len(removed))}

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, faiss=raw, meta=np.frombuffer(json.dumps(head).encode(), dtype=np.uint8),
                         removed=removed)
                f.flush()
                os.fsync(f.fileno())
        atomic_write(self.path / INDEX_NAME, write)
        self._dirty = False

    def _sync(self) -> None:
        """Make the in-memory index match the database (caller holds the lock)."""
        con = self._con()
        if self._index is not None and self._generation(con) == self._gen:
            return
        if not self._load_index(con):
            self._rebuild(con)

    def flush(self) -> None:
        """Write the index file now if it is behind (also done on close and after each rebuild)."""
        with self._lock:
            self._sync()
            if self._index is not None and self._dirty:
                self._save_index()

    def _cleanup_temp_files(self, older_than_s: float = 600.0) -> None:
        """Remove index temp files left by a killed process (old enough not to be in flight)."""
        now = time.time()
        for p in self.path.glob(f".{INDEX_NAME}.*.tmp"):
            try:
                if now - p.stat().st_mtime > older_than_s:
                    p.unlink()
            except OSError:
                pass

    @property
    def index_kind(self) -> str:
        """The FAISS index class in use ("IndexIDMap" exact, "IndexHNSWFlat", "IndexIVFFlat"), or "empty"."""
        with self._lock:
            self._sync()
            if self._index is None:
                return "empty"
            return "IndexHNSWFlat" if self._kind_of(self._index) == "hnsw" else type(self._index).__name__

    # -- writes ------------------------------------------------------------------------------
    @property
    def dim(self) -> int | None:
        v = self._meta(self._con()).get("dim")
        return None if v is None else int(v)

    def _check(self, x: np.ndarray, model_id: str | None) -> np.ndarray:
        if model_id is not None and model_id != self.model_id:
            raise ModelMismatchError(f"embeddings from model {model_id} refused: gallery {self.path} "
                                     f"holds model {self.model_id}")
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[0] == 0 or not np.isfinite(x).all():
            raise ValueError(f"expected finite embeddings [n, d], got shape {x.shape}")
        d = self.dim
        if d is not None and x.shape[1] != d:
            raise ModelMismatchError(f"embedding size {x.shape[1]} does not match the gallery's {d}")
        return x

    def enroll(self, name: str, photos: Sequence[ImageInput] | None = None, embeddings: np.ndarray | None = None,
               model_id: str | None = None, sources: Sequence[str | None] | None = None,
               sha256s: Sequence[str | None] | None = None, skip_failures: bool = False) -> EnrollResult:
        """Add a person (or more photos of one) in a single transaction.

        ``photos`` need the gallery's ``verifier`` (embedded with ``normalize=False`` so the head sees
        the model's own embedding scale); ``embeddings`` must come from ``model_id`` (checked when
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
            photos = list(photos)
            srcs = list(sources) if sources is not None else [
                Path(p).name if isinstance(p, (str, Path)) else None for p in photos]
            z, reasons = self.verifier.embed_each(photos, normalize=False)
            bad = [(i, r) for i, r in enumerate(reasons) if r is not None]
            if bad and not skip_failures:
                i, r = bad[0]
                err = ImageDecodeError if r.startswith("ImageDecodeError") else NoFaceError
                raise err(f"photo #{i} ({srcs[i] or 'in memory'}) of {name!r}: {r}")
            skipped = [(str(srcs[i] or f"#{i}"), r) for i, r in bad]
            ok = [i for i, r in enumerate(reasons) if r is None]
            if not ok:
                return EnrollResult(name, -1, 0, 0, skipped)
            shas = [image_sha256(photos[i]) for i in ok]
            srcs = [srcs[i] for i in ok]
            x = self._check(z, self.verifier.model_id)
        else:
            x = self._check(embeddings, model_id)
            srcs = list(sources) if sources is not None else [None] * len(x)
            shas = list(sha256s) if sha256s is not None else [None] * len(x)
        if len(srcs) != len(x) or len(shas) != len(x):
            raise ValueError("sources/sha256s need one entry per embedding")
        now = time.time()
        added_ids: list[int] = []
        added_vecs: list[np.ndarray] = []
        with self._write() as (con, after):
            self._claim_dim(con, x.shape[1])
            keep = list(range(len(x)))
            if not self.allow_shared_photos:
                owners = self._photo_owners(con, shas, name)
                for i in [i for i in keep if shas[i] in owners]:
                    why = f"this photo is already enrolled as {owners[shas[i]]!r}"
                    if not skip_failures:
                        raise DuplicatePhotoError(f"{srcs[i] or f'photo #{i}'}: {why}")
                    skipped.append((str(srcs[i] or f"#{i}"), why))
                    keep.remove(i)
            if not keep:
                return EnrollResult(name, -1, 0, 0, skipped)
            x, shas, srcs = x[keep], [shas[i] for i in keep], [srcs[i] for i in keep]
            con.execute("INSERT OR IGNORE INTO persons(name, created) VALUES (?, ?)", (name, now))
            pid = con.execute("SELECT id FROM persons WHERE name = ?", (name,)).fetchone()[0]
            for v, sha, src in zip(x, shas, srcs):
                cur = con.execute("INSERT OR IGNORE INTO embeddings(person_id, vector, sha256, source, created, "
                                  "model_id) VALUES (?, ?, ?, ?, ?, ?)",
                                  (pid, v.astype(np.float32).tobytes(), sha, src, now, self.model_id))
                if cur.rowcount == 1:
                    added_ids.append(int(cur.lastrowid))
                    added_vecs.append(v)
            if added_ids:
                after.append(lambda index: self._add_to_index(index, np.stack(added_vecs), added_ids))
        return EnrollResult(name, int(pid), len(added_ids), len(x) - len(added_ids), skipped)

    @staticmethod
    def _photo_owners(con: sqlite3.Connection, shas: Sequence[str | None], name: str) -> dict[str, str]:
        """{SHA-256: the other person's name} for these photos already enrolled under another name."""
        wanted = sorted({s for s in shas if s})
        owners: dict[str, str] = {}
        for i in range(0, len(wanted), 500):
            part = wanted[i:i + 500]
            owners.update(con.execute(f"SELECT e.sha256, p.name FROM embeddings e JOIN persons p ON p.id = e.person_id "
                                      f"WHERE e.sha256 IN ({','.join('?' * len(part))}) AND p.name != ?",
                                      (*part, name)).fetchall())
        return owners

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
        x = self._check(np.concatenate(parts), model_id)
        counts = [len(v) for v in parts]
        now = time.time()
        with self._write() as (con, after):
            self._claim_dim(con, x.shape[1])
            con.executemany("INSERT OR IGNORE INTO persons(name, created) VALUES (?, ?)",
                            ((n, now) for n in dict.fromkeys(names)))
            pid: dict[str, int] = {}
            unique = list(dict.fromkeys(names))
            for i in range(0, len(unique), 500):
                part = unique[i:i + 500]
                pid.update(con.execute(f"SELECT name, id FROM persons WHERE name IN ({','.join('?' * len(part))})",
                                       part).fetchall())
            last = con.execute("SELECT COALESCE(MAX(id), 0) FROM embeddings").fetchone()[0]
            owners = np.repeat(np.array([pid[n] for n in names], dtype=np.int64), counts)
            con.executemany("INSERT INTO embeddings(person_id, vector, sha256, source, created, model_id) "
                            "VALUES (?, ?, NULL, NULL, ?, ?)",
                            ((int(o), v.tobytes(), now, self.model_id) for o, v in zip(owners, x)))
            # ids grow with insertion order (AUTOINCREMENT, one writer inside this transaction)
            ids = np.fromiter((r[0] for r in con.execute("SELECT id FROM embeddings WHERE id > ? ORDER BY id",
                                                         (last,))), dtype=np.int64)
            if len(ids) != len(x):
                raise RuntimeError(f"bulk enrollment inserted {len(ids)} embeddings, not {len(x)}")
            after.append(lambda index: self._add_to_index(index, x, ids))
        return {"persons": len(pid), "added": int(len(x))}

    def _claim_dim(self, con: sqlite3.Connection, d: int) -> None:
        """Inside a write transaction: fix the gallery's embedding size, or refuse another one."""
        row = con.execute("SELECT value FROM meta WHERE key = 'dim'").fetchone()
        if row is None:
            con.execute("INSERT INTO meta VALUES ('dim', ?)", (str(d),))
        elif int(row[0]) != d:
            raise ModelMismatchError(f"embedding size {d} does not match the gallery's {row[0]}")

    def _add_to_index(self, index: Any, x: np.ndarray, ids: list[int] | np.ndarray) -> None:
        if self._kind_of(index) == "flat" and index.ntotal + len(x) > self.exact_limit:
            raise RuntimeError("outgrew exact search")  # _write drops the index: rebuilt approximate
        index.add_with_ids(l2_normalize(x), np.asarray(ids, dtype=np.int64))

    def _remove_from_index(self, index: Any, ids: np.ndarray) -> None:
        if self._kind_of(index) != "hnsw":
            index.remove_ids(ids)
            return
        self._set_removed(self._removed | {int(i) for i in ids})  # an HNSW graph cannot drop nodes
        if len(self._removed) > self.max_removed * index.ntotal:
            raise RuntimeError("too many removed ids in the graph")  # _write drops the index: rebuilt

    def remove(self, name: str) -> bool:
        """Delete a person and all their embeddings; False when there is no such person."""
        with self._write() as (con, after):
            row = con.execute("SELECT id FROM persons WHERE name = ?", (name,)).fetchone()
            if row is None:
                return False
            ids = np.array([r[0] for r in con.execute("SELECT id FROM embeddings WHERE person_id = ?", row)],
                           dtype=np.int64)
            con.execute("DELETE FROM persons WHERE id = ?", row)
            if len(ids):
                after.append(lambda index: self._remove_from_index(index, ids))
        return True

    def rename(self, old: str, new: str) -> None:
        new = str(new).strip()
        if not new:
            raise ValueError("a person needs a non-empty name")
        with self._write() as (con, _):
            if con.execute("SELECT 1 FROM persons WHERE name = ?", (new,)).fetchone():
                raise ValueError(f"a person named {new!r} is already enrolled")
            if con.execute("UPDATE persons SET name = ? WHERE name = ?", (new, old)).rowcount != 1:
                raise KeyError(f"no person named {old!r}")

    # -- reads -------------------------------------------------------------------------------
    def list(self) -> list[PersonInfo]:
        rows = self._con().execute(
            "SELECT p.id, p.name, COUNT(e.id), p.created FROM persons p LEFT JOIN embeddings e "
            "ON e.person_id = p.id GROUP BY p.id ORDER BY p.name").fetchall()
        return [PersonInfo(int(a), b, int(c), float(d)) for a, b, c, d in rows]

    def __len__(self) -> int:
        return int(self._con().execute("SELECT COUNT(*) FROM persons").fetchone()[0])

    def embeddings(self, name: str) -> np.ndarray:
        """A person's enrolled embeddings ``[n, d]`` as stored."""
        rows = self._con().execute("SELECT e.vector FROM embeddings e JOIN persons p ON p.id = e.person_id "
                                   "WHERE p.name = ? ORDER BY e.id", (name,)).fetchall()
        if not rows:
            raise KeyError(f"no person named {name!r}")
        return np.stack([np.frombuffer(r[0], np.float32) for r in rows])

    def identify(self, query: np.ndarray | ImageInput, k: int = 5, threshold: float | None = None,
                 verifier: "FaceVerifier | None" = None) -> Identification:
        """Top-``k`` persons for a query: a 1-D embedding, or a photo (needs a verifier).

        Each person's score is the best cosine between the query and any of their photos
        (``method='best-photo-cosine'``); matches come highest score first (ties by name).
        ``unknown`` when the top score is below ``threshold`` (default: the gallery's, the
        verifier's calibrated one; no open-set decision when None).
        """
        verifier = verifier or self.verifier
        if isinstance(query, np.ndarray) and query.ndim == 1 and np.issubdtype(query.dtype, np.floating):
            q = self._check(query, None)[0]
        else:
            if verifier is None:
                raise ValueError("identifying a photo needs a verifier")
            if verifier.model_id != self.model_id:
                raise ModelMismatchError(f"verifier model {verifier.model_id} is not the gallery's {self.model_id}")
            q = self._check(verifier.embed([query], normalize=False)[0], None)[0]
        if verifier is not None and verifier.model_id != self.model_id:
            raise ModelMismatchError(f"verifier model {verifier.model_id} is not the gallery's {self.model_id}")
        threshold = self.threshold if threshold is None else threshold
        qn = l2_normalize(q)
        con = self._con()
        # more persons than candidates? (bounded count: COUNT(*) over a million persons is a scan)
        n_persons = con.execute("SELECT COUNT(*) FROM (SELECT 1 FROM persons LIMIT ?)",
                                (self.candidates + 1,)).fetchone()[0]
        if n_persons == 0:
            raise ValueError("the gallery is empty")
        with self._lock:
            self._sync()
            search = None
            if n_persons > self.candidates and self._index is not None:
                kk = int(min(self._index.ntotal, max(8 * self.candidates, 64)))
                search = [int(i) for i in self._search(qn[None], kk)[0] if i >= 0]
        if search is None:
            rows = con.execute("SELECT e.person_id, e.vector FROM embeddings e ORDER BY e.id").fetchall()
        else:
            order: dict[int, None] = {}
            for chunk in range(0, len(search), 500):
                part = search[chunk:chunk + 500]
                pmap = dict(con.execute(f"SELECT id, person_id FROM embeddings WHERE id IN "
                                        f"({','.join('?' * len(part))})", part).fetchall())
                for i in part:
                    if i in pmap and len(order) < self.candidates:
                        order.setdefault(pmap[i])
            pids = list(order)
            rows = con.execute(f"SELECT person_id, vector FROM embeddings WHERE person_id IN "
                               f"({','.join('?' * len(pids))}) ORDER BY id", pids).fetchall() if pids else []
        if not rows:
            raise ValueError("the gallery is empty")
        people = list(dict.fromkeys(r[0] for r in rows))
        col = {p: j for j, p in enumerate(people)}
        x = np.stack([np.frombuffer(r[1], np.float32) for r in rows])
        y = np.array([col[r[0]] for r in rows], dtype=np.int64)
        sim = np.full(len(people), -np.inf, np.float64)
        np.maximum.at(sim, y, (l2_normalize(x) @ qn).astype(np.float64))
        scores = np.round(np.clip(sim, -1.0, 1.0), SCORE_DECIMALS)
        names = dict(con.execute(f"SELECT id, name FROM persons WHERE id IN ({','.join('?' * len(people))})",
                                 people).fetchall())
        named = [names.get(p, "?") for p in people]
        best = sorted(range(len(people)), key=lambda j: (-scores[j], named[j]))[:k]
        matches = [Match(named[j], int(people[j]), float(scores[j])) for j in best]
        unknown = threshold is not None and (not matches or matches[0].score < threshold)
        return Identification(matches, bool(unknown), threshold, "best-photo-cosine")

    # -- export / import ---------------------------------------------------------------------
    def _all_rows(self) -> list[tuple[str, bytes, str | None, str | None, float]]:
        con = self._con()
        con.execute("BEGIN")
        try:
            return con.execute("SELECT p.name, e.vector, e.sha256, e.source, e.created FROM embeddings e "
                               "JOIN persons p ON p.id = e.person_id ORDER BY p.name, e.id").fetchall()
        finally:
            con.execute("COMMIT")

    def export(self, path: str | Path) -> Path:
        """Write every person's embeddings to ``.json`` or ``.npz`` (no pickle), atomically."""
        path = Path(path)
        rows = self._all_rows()
        head = {"format": FORMAT, "model_id": self.model_id, "dim": self.dim}
        if path.suffix == ".json":
            persons: dict[str, list[dict[str, Any]]] = {}
            for name, vec, sha, src, created in rows:
                persons.setdefault(name, []).append({"vector": np.frombuffer(vec, np.float32).tolist(),
                                                     "sha256": sha, "source": src, "created": created})
            obj = {**head, "persons": [{"name": n, "embeddings": e} for n, e in persons.items()]}
            atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj)))
        elif path.suffix == ".npz":
            d = self.dim or 0
            arrays = {
                "meta": np.frombuffer(json.dumps(head).encode(), np.uint8),
                "names": np.array([r[0] for r in rows], dtype=str),
                "vectors": np.stack([np.frombuffer(r[1], np.float32) for r in rows]) if rows
                else np.zeros((0, d), np.float32),
                "sha256": np.array([r[2] or "" for r in rows], dtype=str),
                "sources": np.array([r[3] or "" for r in rows], dtype=str),
                "created": np.array([r[4] for r in rows], dtype=np.float64)}

            def write(tmp: str) -> None:
                with open(tmp, "wb") as f:
                    np.savez(f, **arrays)
            atomic_write(path, write)
        else:
            raise ValueError(f"export format must be .json or .npz, not {path.suffix!r}")
        return path

    def import_from(self, path: str | Path) -> dict[str, int]:
        """Merge an export (same model id only) in one transaction; what is already there is skipped."""
        path = Path(path)
        if path.suffix == ".json":
            obj = json.loads(path.read_text())
            head = obj
            entries = [(p["name"], e["vector"], e.get("sha256"), e.get("source"), e.get("created"))
                       for p in obj["persons"] for e in p["embeddings"]]
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                head = json.loads(bytes(z["meta"]).decode())
                entries = [(str(n), v, s or None, src or None, float(c)) for n, v, s, src, c in
                           zip(z["names"], z["vectors"], z["sha256"], z["sources"], z["created"])]
        else:
            raise ValueError(f"import format must be .json or .npz, not {path.suffix!r}")
        if head.get("format") != FORMAT:
            raise ValueError(f"{path} is not a gallery export ({head.get('format')!r})")
        if head.get("model_id") != self.model_id:
            raise ModelMismatchError(f"{path} holds embeddings of model {head.get('model_id')}, "
                                     f"this gallery {self.model_id}")
        by_name: dict[str, list[tuple[Any, ...]]] = {}
        for e in entries:
            by_name.setdefault(e[0], []).append(e)
        added = dup = 0
        if not by_name:
            return {"persons": 0, "added": 0, "duplicates": 0}
        x = self._check(np.stack([np.asarray(e[1], np.float32) for e in entries]), None)
        with self._write() as (con, after):
            self._claim_dim(con, x.shape[1])
            new_ids: list[int] = []
            new_vecs: list[np.ndarray] = []
            for name, items in by_name.items():
                con.execute("INSERT OR IGNORE INTO persons(name, created) VALUES (?, ?)", (name, time.time()))
                pid = con.execute("SELECT id FROM persons WHERE name = ?", (name,)).fetchone()[0]
                for _, vec, sha, src, created in items:
                    blob = np.asarray(vec, np.float32).tobytes()
                    if sha is None and con.execute("SELECT 1 FROM embeddings WHERE person_id = ? AND vector = ?",
                                                   (pid, blob)).fetchone():
                        dup += 1  # photo-less embeddings are matched by value, so imports are idempotent
                        continue
                    cur = con.execute("INSERT OR IGNORE INTO embeddings(person_id, vector, sha256, source, created, "
                                      "model_id) VALUES (?, ?, ?, ?, ?, ?)",
                                      (pid, blob, sha, src,
                                       created if created is not None else time.time(), self.model_id))
                    if cur.rowcount == 1:
                        added += 1
                        new_ids.append(int(cur.lastrowid))
                        new_vecs.append(np.asarray(vec, np.float32))
                    else:
                        dup += 1
            if new_ids:
                after.append(lambda index: self._add_to_index(index, np.stack(new_vecs), new_ids))
        return {"persons": len(by_name), "added": added, "duplicates": dup}
