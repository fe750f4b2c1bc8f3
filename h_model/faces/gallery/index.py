"""The gallery's FAISS index: a rebuildable search structure over the normalised embeddings.

``index.npz`` holds the serialised index, a header (generation, count and a hash of the embedding
ids it was built from, model id, checksum) and the ids removed from an HNSW graph; it is written
atomically and adopted only when it matches the database exactly, else rebuilt from SQLite
(missing, corrupt, stale, or of another kind than the settings ask for). Exact inner product up
to ``exact_limit`` embeddings, then an HNSW graph (or IVF lists with ``approx="ivf"``).
Callers hold :attr:`FaissIndex.lock` around every use of the in-memory index.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import faiss
import numpy as np

from ...checkpoint import atomic_write
from ..scores import l2_normalize
from .store import FORMAT, Store

__all__ = ["INDEX_NAME", "IndexSettings", "FaissIndex"]

INDEX_NAME = "index.npz"


@dataclass
class IndexSettings:
    """See :class:`~h_model.faces.gallery.Gallery` for what each setting does."""

    exact_limit: int = 50_000
    nprobe: int = 16
    approx: str = "hnsw"
    hnsw_m: int = 32
    ef_construction: int = 100
    ef_search: int = 128
    max_removed: float = 0.1

    def __post_init__(self) -> None:
        if self.approx not in ("hnsw", "ivf"):
            raise ValueError(f"approx must be 'hnsw' or 'ivf', not {self.approx!r}")


def _ids_hash(ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()


def kind_of(index: Any) -> str:
    """'flat', 'hnsw' or 'ivf'."""
    if isinstance(index, faiss.IndexIVF):
        return "ivf"
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return "hnsw" if isinstance(inner, faiss.IndexHNSW) else "flat"


class FaissIndex:
    """The in-memory index of one gallery (``faiss``: None until built or loaded) and its file."""

    def __init__(self, path: Path, store: Store, settings: IndexSettings, lock: threading.RLock) -> None:
        self.file = path / INDEX_NAME
        self.store, self.settings, self.lock = store, settings, lock
        self.faiss: Any = None
        self.generation = -1  # the database generation the in-memory index reflects
        self.dirty = False  # ahead of the file
        self.removed: set[int] = set()  # ids still in an HNSW graph but no longer in the database
        self._removed_sel: Any = None

    # -- kinds and construction ---------------------------------------------------------------
    def kind_for(self, n: int) -> str:
        """The index kind these settings ask for at ``n`` embeddings: 'flat', 'hnsw' or 'ivf'."""
        return "flat" if n <= self.settings.exact_limit else self.settings.approx

    def _new(self, x: np.ndarray, d: int) -> Any:
        s = self.settings
        kind = self.kind_for(len(x))
        if kind == "flat":
            return faiss.index_factory(d, "IDMap,Flat", faiss.METRIC_INNER_PRODUCT)
        if kind == "hnsw":
            graph = faiss.IndexHNSWFlat(d, s.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = s.ef_construction
            graph.hnsw.efSearch = s.ef_search
            return faiss.IndexIDMap(graph)
        n = len(x)
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
        index = faiss.index_factory(d, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.nprobe = s.nprobe
        return index

    def _set_removed(self, removed: Iterable[int]) -> None:
        self.removed = {int(i) for i in removed}
        self._removed_sel = None

    @property
    def kind_name(self) -> str:
        """The FAISS index class in use ("IndexIDMap" exact, "IndexHNSWFlat", "IndexIVFFlat"), or "empty"."""
        with self.lock:
            self.sync()
            if self.faiss is None:
                return "empty"
            return "IndexHNSWFlat" if kind_of(self.faiss) == "hnsw" else type(self.faiss).__name__

    # -- search and updates (caller holds the lock) -------------------------------------------
    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        """Ids of the ``k`` nearest stored embeddings of each normalised query row."""
        params = None
        if kind_of(self.faiss) == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(self.settings.ef_search, k)
            if self.removed:
                if self._removed_sel is None:  # built once per change of the removed set
                    dead = np.fromiter(self.removed, dtype=np.int64, count=len(self.removed))
                    self._removed_sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(dead))
                params.sel = self._removed_sel
        _, found = self.faiss.search(np.ascontiguousarray(q, dtype=np.float32), k, params=params)
        return found

    def add(self, x: np.ndarray, ids: list[int] | np.ndarray) -> None:
        if kind_of(self.faiss) == "flat" and self.faiss.ntotal + len(x) > self.settings.exact_limit:
            raise RuntimeError("outgrew exact search")  # apply() drops the index: rebuilt approximate
        self.faiss.add_with_ids(l2_normalize(x), np.asarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> None:
        if kind_of(self.faiss) != "hnsw":
            self.faiss.remove_ids(ids)
            return
        self._set_removed(self.removed | {int(i) for i in ids})  # an HNSW graph cannot drop nodes
        if len(self.removed) > self.settings.max_removed * self.faiss.ntotal:
            raise RuntimeError("too many removed ids in the graph")  # apply() drops the index: rebuilt

    def follow(self, generation: int) -> None:
        """At the start of a write: drop the in-memory index if another process wrote meanwhile."""
        if generation != self.generation:
            self.faiss = None

    def apply(self, updates: list[Callable[["FaissIndex"], None]], generation: int) -> None:
        """After a COMMIT: bring the in-memory index along (``updates``), or drop it to be rebuilt."""
        if self.faiss is None:
            return
        try:
            for update in updates:
                update(self)
            self.generation, self.dirty = generation, True
        except RuntimeError:
            self.faiss = None

    # -- lifecycle ----------------------------------------------------------------------------
    def sync(self) -> None:
        """Make the in-memory index match the database (caller holds the lock)."""
        con = self.store.con()
        if self.faiss is not None and self.store.generation(con) == self.generation:
            return
        if not self.load(con):
            self.rebuild(con)

    def flush(self) -> None:
        """Write the index file now if it is behind."""
        with self.lock:
            self.sync()
            if self.faiss is not None and self.dirty:
                self.save()

    def rebuild(self, con: sqlite3.Connection) -> None:
        id_parts, x_parts = [], []
        with self.store.snapshot():
            gen, d = self.store.generation(con), self.store.dim
            for ids, x in self.store.embedding_chunks(con):
                id_parts.append(ids)
                x_parts.append(x)
        self._set_removed(())
        if d is None:
            self.faiss, self.generation = None, gen
            return
        ids = np.concatenate(id_parts) if id_parts else np.zeros(0, np.int64)
        x = l2_normalize(np.concatenate(x_parts)) if x_parts else np.zeros((0, d), np.float32)
        del x_parts
        index = self._new(x, d)
        if len(x):
            index.add_with_ids(x, ids)
        self.faiss, self.generation = index, gen
        self.save()

    def load(self, con: sqlite3.Connection) -> bool:
        """Adopt the index file if it matches the database exactly; False when missing/stale/corrupt."""
        if not self.file.is_file():
            return False
        try:
            with np.load(self.file, allow_pickle=False) as z:
                head = json.loads(bytes(z["meta"]).decode())
                raw = z["faiss"]
                removed = z["removed"] if "removed" in z.files else np.zeros(0, np.int64)
            if head.get("sha256") != hashlib.sha256(raw.tobytes()).hexdigest():
                return False
            gen, ids = self.store.state(con)
            if (head.get("generation"), head.get("count"), head.get("ids"), head.get("model_id")) != \
                    (gen, len(ids), _ids_hash(ids), self.store.model_id):
                return False
            index = faiss.deserialize_index(raw)
            kind = kind_of(index)
            if index.ntotal != len(ids) + len(removed) or (len(removed) and kind != "hnsw") \
                    or kind != self.kind_for(len(ids)):
                return False  # stale, or the settings now ask for another kind of index
        except (OSError, ValueError, KeyError, RuntimeError, json.JSONDecodeError):
            return False
        if kind == "ivf":
            index.nprobe = self.settings.nprobe
        elif kind == "hnsw":
            faiss.downcast_index(index.index).hnsw.efSearch = self.settings.ef_search
        self._set_removed(removed)
        self.faiss, self.generation, self.dirty = index, gen, False
        return True

    def save(self) -> None:
        gen, ids = self.store.state(self.store.con())
        if gen != self.generation or self.faiss is None or self.faiss.ntotal != len(ids) + len(self.removed):
            return  # the database moved on: a stale file would only be rebuilt
        raw = faiss.serialize_index(self.faiss)
        removed = np.array(sorted(self.removed), dtype=np.int64)
        head = {"format": FORMAT, "generation": gen, "count": int(len(ids)), "ids": _ids_hash(ids),
                "model_id": self.store.model_id, "sha256": hashlib.sha256(raw.tobytes()).hexdigest(),
                "kind": type(self.faiss).__name__, "removed": int(len(removed))}

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, faiss=raw, meta=np.frombuffer(json.dumps(head).encode(), dtype=np.uint8),
                         removed=removed)
                f.flush()
                os.fsync(f.fileno())
        atomic_write(self.file, write)
        self.dirty = False

    def cleanup_temp_files(self, older_than_s: float = 600.0) -> None:
        """Remove index temp files left by a killed process (old enough not to be in flight)."""
        now = time.time()
        for p in self.file.parent.glob(f".{INDEX_NAME}.*.tmp"):
            try:
                if now - p.stat().st_mtime > older_than_s:
                    p.unlink()
            except OSError:
                pass
