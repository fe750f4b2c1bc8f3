"""The gallery's SQLite store, its source of truth: persons, one float32 embedding per photo
(with the photo's SHA-256, source name, time and model id) and the gallery's metadata.

WAL mode, one connection per thread, one IMMEDIATE transaction per write that bumps a
generation counter (so other processes' writes are noticed). Every SQL statement of the gallery
is here.
"""
from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .results import ModelMismatchError, PersonInfo

__all__ = ["FORMAT", "DB_NAME", "Store", "Transaction"]

FORMAT = "h_model.faces.gallery/1"
DB_NAME = "gallery.sqlite"
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
CHUNK = 500  # ids per "IN (...)" query


@dataclass
class Transaction:
    """An open write: ``start`` is the generation it began at, ``generation`` the one it committed."""

    con: sqlite3.Connection
    start: int
    generation: int = -1


def _in(n: int) -> str:
    return ",".join("?" * n)


class Store:
    """The SQLite file ``<path>/gallery.sqlite``; :meth:`open` creates or checks it for a model id."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.model_id = ""
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    # -- connections and transactions ---------------------------------------------------------
    def con(self) -> sqlite3.Connection:
        """This thread's connection."""
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

    @property
    def is_open(self) -> bool:
        return bool(self._connections)

    def close(self) -> None:
        with self._lock:
            for con in self._connections:
                con.close()
            self._connections.clear()
            self._local = threading.local()

    @staticmethod
    def meta(con: sqlite3.Connection) -> dict[str, str]:
        return dict(con.execute("SELECT key, value FROM meta").fetchall())

    @staticmethod
    def generation(con: sqlite3.Connection) -> int:
        row = con.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(row[0]) if row else 0

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One IMMEDIATE transaction that bumps the generation on COMMIT (rolled back on any error)."""
        con = self.con()
        con.execute("BEGIN IMMEDIATE")
        try:
            tx = Transaction(con, self.generation(con))
            yield tx
            con.execute("INSERT INTO meta VALUES ('generation', '1') ON CONFLICT(key) DO UPDATE "
                        "SET value = CAST(value AS INTEGER) + 1")
            tx.generation = self.generation(con)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent view of the database."""
        con = self.con()
        con.execute("BEGIN")
        try:
            yield con
        finally:
            con.execute("COMMIT")

    # -- the gallery's identity ---------------------------------------------------------------
    def open(self, wanted: str | None) -> str:
        """Create the schema; adopt the stored model id (refusing ``wanted`` when it differs), or
        store ``wanted`` in a new gallery. Returns the model id."""
        con = self.con()
        con.executescript(SCHEMA)
        meta = self.meta(con)
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
            return self.model_id
        if wanted is None:
            raise ValueError(f"{self.path} is a new gallery: pass model_id=... or verifier=...")
        with self.transaction() as tx:
            tx.con.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?), ('model_id', ?), ('generation', '0')",
                           (FORMAT, wanted))
        self.model_id = self.meta(con)["model_id"]
        if self.model_id != wanted:  # another process created it first with another model
            raise ModelMismatchError(f"gallery {self.path} was just created for model {self.model_id}")
        return self.model_id

    @property
    def dim(self) -> int | None:
        v = self.meta(self.con()).get("dim")
        return None if v is None else int(v)

    def check(self, x: np.ndarray, model_id: str | None) -> np.ndarray:
        """Embeddings as float32 ``[n, d]``, refused when from another model, not finite, empty, or
        of another size than the gallery's."""
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

    @staticmethod
    def claim_dim(con: sqlite3.Connection, d: int) -> None:
        """Inside a write transaction: fix the gallery's embedding size, or refuse another one."""
        row = con.execute("SELECT value FROM meta WHERE key = 'dim'").fetchone()
        if row is None:
            con.execute("INSERT INTO meta VALUES ('dim', ?)", (str(d),))
        elif int(row[0]) != d:
            raise ModelMismatchError(f"embedding size {d} does not match the gallery's {row[0]}")

    # -- writes (inside a transaction) ----------------------------------------------------------
    @staticmethod
    def person_ids(con: sqlite3.Connection, names: Sequence[str], now: float) -> dict[str, int]:
        """{name: person id} for these names, adding the persons not enrolled yet."""
        unique = list(dict.fromkeys(names))
        con.executemany("INSERT OR IGNORE INTO persons(name, created) VALUES (?, ?)", ((n, now) for n in unique))
        pid: dict[str, int] = {}
        for i in range(0, len(unique), CHUNK):
            part = unique[i:i + CHUNK]
            pid.update(con.execute(f"SELECT name, id FROM persons WHERE name IN ({_in(len(part))})", part).fetchall())
        return pid

    @staticmethod
    def photo_owners(con: sqlite3.Connection, shas: Sequence[str | None], name: str) -> dict[str, str]:
        """{SHA-256: the other person's name} for these photos already enrolled under another name."""
        wanted = sorted({s for s in shas if s})
        owners: dict[str, str] = {}
        for i in range(0, len(wanted), CHUNK):
            part = wanted[i:i + CHUNK]
            owners.update(con.execute(f"SELECT e.sha256, p.name FROM embeddings e JOIN persons p ON p.id = e.person_id "
                                      f"WHERE e.sha256 IN ({_in(len(part))}) AND p.name != ?",
                                      (*part, name)).fetchall())
        return owners

    def insert_embeddings(self, con: sqlite3.Connection, owners: np.ndarray, x: np.ndarray,
                          shas: Sequence[str | None], sources: Sequence[str | None], created: Sequence[float],
                          match_by_value: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Insert row ``i`` (person ``owners[i]``, embedding ``x[i]``) unless that person already has
        the photo (same SHA-256) or, with ``match_by_value``, the same photo-less embedding.
        Returns (the new embedding ids, a mask of the rows inserted)."""
        rows = [(int(o), v.tobytes(), sha, src, float(c), self.model_id)
                for o, v, sha, src, c in zip(owners, x, shas, sources, created)]
        if not match_by_value and all(sha is None for sha in shas):  # nothing can collide: one bulk insert
            last = con.execute("SELECT COALESCE(MAX(id), 0) FROM embeddings").fetchone()[0]
            con.executemany("INSERT INTO embeddings(person_id, vector, sha256, source, created, model_id) "
                            "VALUES (?, ?, ?, ?, ?, ?)", rows)
            # ids grow with insertion order (AUTOINCREMENT, one writer inside this transaction)
            ids = np.fromiter((r[0] for r in con.execute("SELECT id FROM embeddings WHERE id > ? ORDER BY id",
                                                         (last,))), dtype=np.int64)
            if len(ids) != len(rows):
                raise RuntimeError(f"bulk enrollment inserted {len(ids)} embeddings, not {len(rows)}")
            return ids, np.ones(len(rows), bool)
        new_ids: list[int] = []
        mask = np.zeros(len(rows), bool)
        for i, row in enumerate(rows):
            if match_by_value and row[2] is None and con.execute(
                    "SELECT 1 FROM embeddings WHERE person_id = ? AND vector = ?", row[:2]).fetchone():
                continue  # photo-less embeddings are matched by value, so imports are idempotent
            cur = con.execute("INSERT OR IGNORE INTO embeddings(person_id, vector, sha256, source, created, "
                              "model_id) VALUES (?, ?, ?, ?, ?, ?)", row)
            if cur.rowcount == 1:
                new_ids.append(int(cur.lastrowid))
                mask[i] = True
        return np.array(new_ids, dtype=np.int64), mask

    @staticmethod
    def remove_person(con: sqlite3.Connection, name: str) -> np.ndarray | None:
        """Delete a person; their embedding ids, or None when there is no such person."""
        row = con.execute("SELECT id FROM persons WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        ids = np.array([r[0] for r in con.execute("SELECT id FROM embeddings WHERE person_id = ?", row)],
                       dtype=np.int64)
        con.execute("DELETE FROM persons WHERE id = ?", row)
        return ids

    @staticmethod
    def rename_person(con: sqlite3.Connection, old: str, new: str) -> None:
        if con.execute("SELECT 1 FROM persons WHERE name = ?", (new,)).fetchone():
            raise ValueError(f"a person named {new!r} is already enrolled")
        if con.execute("UPDATE persons SET name = ? WHERE name = ?", (new, old)).rowcount != 1:
            raise KeyError(f"no person named {old!r}")

    # -- reads --------------------------------------------------------------------------------
    def persons(self) -> list[PersonInfo]:
        rows = self.con().execute(
            "SELECT p.id, p.name, COUNT(e.id), p.created FROM persons p LEFT JOIN embeddings e "
            "ON e.person_id = p.id GROUP BY p.id ORDER BY p.name").fetchall()
        return [PersonInfo(int(a), b, int(c), float(d)) for a, b, c, d in rows]

    def count_persons(self, at_most: int | None = None) -> int:
        """How many persons (counting no further than ``at_most``: COUNT(*) of a million persons is a scan)."""
        con = self.con()
        if at_most is None:
            return int(con.execute("SELECT COUNT(*) FROM persons").fetchone()[0])
        return int(con.execute("SELECT COUNT(*) FROM (SELECT 1 FROM persons LIMIT ?)", (at_most,)).fetchone()[0])

    def vectors_of_name(self, name: str) -> list[bytes]:
        rows = self.con().execute("SELECT e.vector FROM embeddings e JOIN persons p ON p.id = e.person_id "
                                  "WHERE p.name = ? ORDER BY e.id", (name,)).fetchall()
        return [r[0] for r in rows]

    @staticmethod
    def state(con: sqlite3.Connection) -> tuple[int, np.ndarray]:
        """(generation, every embedding id in order)."""
        gen = Store.generation(con)
        ids = np.array([r[0] for r in con.execute("SELECT id FROM embeddings ORDER BY id")], dtype=np.int64)
        return gen, ids

    def first_persons(self, embedding_ids: Sequence[int], limit: int) -> list[int]:
        """The first ``limit`` distinct persons owning these embeddings, in the ids' order."""
        con = self.con()
        order: dict[int, None] = {}
        for chunk in range(0, len(embedding_ids), CHUNK):
            part = list(embedding_ids[chunk:chunk + CHUNK])
            pmap = dict(con.execute(f"SELECT id, person_id FROM embeddings WHERE id IN ({_in(len(part))})",
                                    part).fetchall())
            for i in part:
                if i in pmap and len(order) < limit:
                    order.setdefault(pmap[i])
        return list(order)

    def vectors(self, persons: Sequence[int] | None = None) -> list[tuple[int, bytes]]:
        """(person id, embedding bytes) of every photo, or of these persons' photos, by embedding id."""
        con = self.con()
        if persons is None:
            return con.execute("SELECT person_id, vector FROM embeddings ORDER BY id").fetchall()
        if not persons:
            return []
        return con.execute(f"SELECT person_id, vector FROM embeddings WHERE person_id IN ({_in(len(persons))}) "
                           "ORDER BY id", list(persons)).fetchall()

    def names(self, persons: Sequence[int]) -> dict[int, str]:
        return dict(self.con().execute(f"SELECT id, name FROM persons WHERE id IN ({_in(len(persons))})",
                                       list(persons)).fetchall())

    def all_rows(self) -> list[tuple[str, bytes, str | None, str | None, float]]:
        """(name, embedding bytes, SHA-256, source, created) of every photo, by name then id, in one snapshot."""
        with self.snapshot() as con:
            return con.execute("SELECT p.name, e.vector, e.sha256, e.source, e.created FROM embeddings e "
                               "JOIN persons p ON p.id = e.person_id ORDER BY p.name, e.id").fetchall()

    def embedding_chunks(self, con: sqlite3.Connection, size: int = 65536) -> Iterator[tuple[np.ndarray, Any]]:
        """(ids, ``[n, d]`` float32) of every embedding by id, in chunks (a million rows as Python
        objects would be gigabytes); the caller holds a snapshot."""
        cur = con.execute("SELECT id, vector FROM embeddings ORDER BY id")
        while rows := cur.fetchmany(size):
            yield (np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)),
                   np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1))
