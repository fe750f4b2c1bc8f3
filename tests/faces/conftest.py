"""Fixtures for the face pipeline tests: the real face photos, one detector, a tiny checkpoint."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.faces.face_helpers import CROP, make_checkpoint


@pytest.fixture(scope="session")
def faces_root(data_root: Path) -> Path:
    root = data_root / "faces"
    if not (root / "celeba_align").is_dir():
        pytest.skip(f"real face photos not found under {root}")
    return root


@pytest.fixture(scope="session")
def face_photo(faces_root: Path) -> Path:
    """One aligned celebrity photo (178x218 JPEG) with a single clear face."""
    return sorted((faces_root / "celeba_align" / "00082").iterdir())[0]


@pytest.fixture(scope="session")
def detector():
    from h_model.faces import FaceDetector

    return FaceDetector(crop_size=CROP, margin=0.2)


@pytest.fixture(scope="session")
def face_ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "run")


@pytest.fixture(scope="session")
def verifier(face_ckpt: Path):
    from h_model.faces import FaceVerifier

    return FaceVerifier.load(face_ckpt, device="cpu")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """MTCNN's many small ops run ~10x slower with 2 OpenMP threads on a busy 2-core machine
    (restored after each module, so other test folders keep their setting)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
