"""Gallery exports: every person's embeddings in ``.json`` or ``.npz`` (no pickle), and reading them back."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...checkpoint import atomic_write
from .results import ModelMismatchError
from .store import FORMAT

__all__ = ["write_export", "read_export"]

Row = tuple[str, Any, "str | None", "str | None", "float | None"]  # name, vector, SHA-256, source, created


def write_export(path: str | Path, rows: Sequence[Row], model_id: str, dim: int | None) -> Path:
    """Write ``rows`` (by person name) to ``path``, atomically; the format follows the suffix."""
    path = Path(path)
    head = {"format": FORMAT, "model_id": model_id, "dim": dim}
    if path.suffix == ".json":
        persons: dict[str, list[dict[str, Any]]] = {}
        for name, vec, sha, src, created in rows:
            persons.setdefault(name, []).append({"vector": np.frombuffer(vec, np.float32).tolist(),
                                                 "sha256": sha, "source": src, "created": created})
        obj = {**head, "persons": [{"name": n, "embeddings": e} for n, e in persons.items()]}
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj)))
    elif path.suffix == ".npz":
        arrays = {
            "meta": np.frombuffer(json.dumps(head).encode(), np.uint8),
            "names": np.array([r[0] for r in rows], dtype=str),
            "vectors": np.stack([np.frombuffer(r[1], np.float32) for r in rows]) if rows
            else np.zeros((0, dim or 0), np.float32),
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


def read_export(path: str | Path, model_id: str) -> list[Row]:
    """The rows of an export of a gallery of ``model_id`` (refused when of another model)."""
    path = Path(path)
    if path.suffix == ".json":
        head = json.loads(path.read_text())
        rows: list[Row] = [(p["name"], e["vector"], e.get("sha256"), e.get("source"), e.get("created"))
                           for p in head["persons"] for e in p["embeddings"]]
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            head = json.loads(bytes(z["meta"]).decode())
            rows = [(str(n), v, s or None, src or None, float(c)) for n, v, s, src, c in
                    zip(z["names"], z["vectors"], z["sha256"], z["sources"], z["created"])]
    else:
        raise ValueError(f"import format must be .json or .npz, not {path.suffix!r}")
    if head.get("format") != FORMAT:
        raise ValueError(f"{path} is not a gallery export ({head.get('format')!r})")
    if head.get("model_id") != model_id:
        raise ModelMismatchError(f"{path} holds embeddings of model {head.get('model_id')}, this gallery {model_id}")
    return rows
