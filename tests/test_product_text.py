"""Shipped files describe the product, not how it was made: no session or issue numbers, no run-numbered paths."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PATTERN = re.compile(r"\bsession[ -]?\d|\bthis\s+session\b|\bissue ?#?\d|runs/s\d|_s\d+(?:_[a-z0-9]+)*\.(?:json|png|yaml|txt)\b", re.IGNORECASE)
SKIP_DIRS = {".git", ".venv", ".ci", "build", "__pycache__", ".pytest_cache"}


def shipped_files() -> list[Path]:
    """The files git tracks (or, outside a checkout, every file below the repository)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
        files = [REPO / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in REPO.rglob("*") if p.is_file()]
    here = Path(__file__).resolve()
    return [p for p in files if p != here and not SKIP_DIRS & set(p.relative_to(REPO).parts) and p.is_file()]


def offending_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return []  # binary files (weights, images)
    return [f"{path.relative_to(REPO)}:{i}: {line.strip()[:120]}"
            for i, line in enumerate(text.splitlines(), 1) if PATTERN.search(line)]


def test_pattern_catches_process_talk() -> None:
    s, i = "sess" + "ion", "iss" + "ue"  # spelt apart so this file does not match itself
    for bad in (f"measured in {s} 9", f"see {i} #4", f"({i} 7)", "runs" + "/s10/x", "maml_s9_amx.json",
                f"on this {s}'s CPU", f"the {s}-5 model"):
        assert PATTERN.search(bad), bad
    for fine in ("a SQLite session", "issues are welcome", "runs/proto", "results.json", "sessions"):
        assert not PATTERN.search(fine), fine


def test_no_process_talk_in_shipped_files() -> None:
    found = [line for p in shipped_files() for line in offending_lines(p)]
    assert not found, "product files speak of how they were made:\n" + "\n".join(found[:40])
