"""Fixtures for the web demo tests: the face model (bundled, or ``$H_FACE_MODEL``), real face photos, and one
app server (no login, a fresh gallery) shared by the test modules that drive it over HTTP."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def face_model() -> Path:
    """``$H_FACE_MODEL`` if set, else the bundled face model; a missing model is a failure, never a skip."""
    from app.face_demo import resolve_face_model
    from h_model.faces import NoModelError

    if os.environ.get("H_FACE_MODEL"):
        return Path(os.environ["H_FACE_MODEL"])
    try:
        return resolve_face_model(None)
    except NoModelError as e:
        pytest.fail(f"no face model for the app tests: {e}. Bundle h_model/bundled/faces_default or set "
                    "H_FACE_MODEL=PATH to a face checkpoint.")


@pytest.fixture(scope="session")
def celeba(data_root: Path) -> list[Path]:
    """The celeba_align identity folders (aligned 178x218 photos, one face each), sorted."""
    root = data_root / "faces" / "celeba_align"
    if not root.is_dir():
        pytest.skip(f"real face photos not found under {root}")
    return sorted(p for p in root.iterdir() if p.is_dir())


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One torch thread, as the app itself runs: MTCNN's many small ops crawl with two on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def server(tmp_path_factory, face_model: Path, celeba: list[Path]):
    """``app/app.py`` on a free loopback port: every test that uses it leaves the gallery empty again."""
    from tests.app.app_helpers import AppServer

    work = tmp_path_factory.mktemp("app_server")
    app = AppServer(work / "gallery", face_model, work).start()
    print(f"\napp cold start (process start to first page): {app.start_s:.1f} s")
    yield app
    app.stop()
