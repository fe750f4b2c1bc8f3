"""Where data lives: --data-root, else $H_DATA_ROOT, else a folder in the user's cache."""
from __future__ import annotations

import os
from pathlib import Path


class DataNotFoundError(FileNotFoundError):
    """The dataset is not on disk and could not be downloaded; the message says where we looked."""


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    if data_root:
        return Path(data_root).expanduser()
    if os.environ.get("H_DATA_ROOT"):
        return Path(os.environ["H_DATA_ROOT"]).expanduser()
    return Path.home() / ".cache" / "h_model" / "data"


def not_found(what: str, looked: list[Path], reason: str = "") -> DataNotFoundError:
    lines = [f"{what} not found. Looked in:"] + [f"  - {p}" for p in looked]
    if reason:
        lines.append(reason)
    lines.append("Point to it with --data-root DIR or the H_DATA_ROOT environment variable.")
    return DataNotFoundError("\n".join(lines))
