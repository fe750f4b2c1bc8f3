"""Shared fixtures: the real data root (skipped with a reason where absent) and tiny ImageSets."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from h_model.data import ImageSet
from h_model.data.root import resolve_data_root
from h_model.preprocess import Preprocess

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path | None:
    """The data root (:func:`~h_model.data.resolve_data_root`: ``$H_DATA_ROOT``, else the user's data
    cache) when it holds Omniglot."""
    root = resolve_data_root()
    return root if (root / "omniglot-py" / "images_background").is_dir() else None


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = shared_data_root()
    if root is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have omniglot-py under the data root {resolve_data_root()} (set H_DATA_ROOT)")
        pytest.skip(f"real data not found under {resolve_data_root()}: set H_DATA_ROOT to the data folder")
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):  # noqa: PT004
    """Tests share one decode cache per session, never the user's own."""
    monkeypatch.setenv("H_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def tiny_imageset(classes: int = 10, per_class: int = 6, size: int = 8, channels: int = 1, seed: int = 0) -> ImageSet:
    """Images whose first pixel encodes (class, index), so tests can trace every sample."""
    g = torch.Generator().manual_seed(seed)
    n = classes * per_class
    imgs = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(classes).repeat_interleave(per_class)
    imgs[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return ImageSet(imgs, labels, [f"c{i}" for i in range(classes)], Preprocess(size=(size, size), channels=channels))
