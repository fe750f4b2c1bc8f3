"""Face datasets: MTCNN alignment of real photos, skipping what cannot be used, caching, identity splits."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from h_model.data import load_splits
from h_model.data.faces import align_folder, face_sets, faces_splits


@pytest.fixture(scope="module")
def face_tree(tmp_path_factory, data_root: Path) -> Path:
    """Two tiny sets (3 ORL and 3 CASIA identities, 3 photos each) plus a corrupt file and a faceless image."""
    root = tmp_path_factory.mktemp("faces")
    for set_name in ("orl", "casia_facev5_subset"):
        src = data_root / "faces" / set_name
        for person in sorted(p for p in src.iterdir() if p.is_dir())[:3]:
            dst = root / set_name / person.name
            dst.mkdir(parents=True)
            for f in sorted(person.iterdir())[:3]:
                shutil.copy(f, dst / f.name)
    (root / "orl" / "s1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    omni = next((data_root / "omniglot-py" / "images_background").glob("*/*/*.png"))
    shutil.copy(omni, root / "orl" / "s10" / "no_face.png")
    return root


def test_face_sets_finds_sets_or_a_single_set(face_tree: Path) -> None:
    assert [p.name for p in face_sets(face_tree)] == ["casia_facev5_subset", "orl"]
    assert face_sets(face_tree / "orl") == [face_tree / "orl"]


def test_align_folder_skips_unusable_photos_and_caches(face_tree: Path, tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        s = align_folder(face_tree / "orl", crop_size=64, cache_dir=tmp_path)
    assert s.images.shape == (9, 3, 64, 64) and s.images.dtype == torch.uint8
    assert s.class_names == ["s1", "s10", "s11"]
    assert sorted(torch.bincount(s.labels).tolist()) == [3, 3, 3]
    assert "1 unreadable" in caplog.text and "1 without a detectable face" in caplog.text
    assert all(Path(p).suffix == ".pgm" for p in s.sources)
    assert len(list(tmp_path.glob("faces-orl-*.pt"))) == 1
    again = align_folder(face_tree / "orl", crop_size=64, cache_dir=tmp_path)  # from the cache file
    assert torch.equal(again.images, s.images) and again.sources == s.sources


def test_aligned_crop_is_the_verifier_crop(face_tree: Path, tmp_path: Path) -> None:
    """Training crops and prediction-time crops come from the same detector and alignment."""
    import numpy as np

    from h_model.faces import FaceDetector

    s = align_folder(face_tree / "casia_facev5_subset", crop_size=64, cache_dir=tmp_path)
    crop = FaceDetector(crop_size=64, margin=0.2).detect(s.sources[0])[0].crop
    assert np.array_equal(np.asarray(crop), s.images[0].permute(1, 2, 0).numpy())


def test_faces_splits_are_identity_disjoint_per_set(face_tree: Path) -> None:
    parts = faces_splits(face_tree, image_size=64, split=(1 / 3, 1 / 3, 1 / 3), seed=0)
    names = [set(p.class_names) for p in parts]
    assert all(len(n) == 2 for n in names)  # one identity of each set in each part
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    assert {n.split("/")[0] for n in names[2]} == {"orl", "casia_facev5_subset"}
    again = load_splits("faces", data_root=str(face_tree), image_size=64, seed=0, split=(1 / 3, 1 / 3, 1 / 3))
    assert [p.class_names for p in again] == [p.class_names for p in parts]
    assert parts[0].preprocess.channels == 3 and parts[0].preprocess.size == (64, 64)


def test_unknown_set_is_a_clear_error(face_tree: Path) -> None:
    with pytest.raises(ValueError, match="unknown face set"):
        faces_splits(face_tree, image_size=64, sets=["lfw"])


def test_face_training_run_calibrates_its_threshold(face_tree: Path, tmp_path: Path) -> None:
    """The face path of train(): aligned crops in, a checkpoint with a calibrated threshold out."""
    import json

    from h_model.faces import FaceVerifier
    from h_model.trainer import TrainConfig, train

    cfg = TrainConfig(variant="proto", backbone="face_resnet", backbone_kwargs={"channels": [8, 8, 16, 16]},
                      model_kwargs={"distance": "cosine"}, dataset="faces", data_root=str(face_tree),
                      image_size=64, data_kwargs={"split": [1 / 3, 1 / 3, 1 / 3]}, augment=True,
                      episodes=4, train_way=2, train_shot=1, train_query=2, test_way=2, test_shot=1, test_query=2,
                      val_every=2, val_episodes=5, eval_settings=["2w1s"], eval_query=2, eval_episodes=5,
                      out=str(tmp_path / "run"))
    results = train(cfg)
    v = results["verification"]
    assert v["test_pairs"] == 6 + 9 and 0.0 <= v["accuracy"] <= 1.0  # all 6 matched and 9 mismatched pairs
    face = json.loads((tmp_path / "run" / "config.json").read_text())["face"]
    assert face["threshold"] == pytest.approx(v["threshold"]) and face["crop_size"] == 64 and face["far"] == 1e-3
    verifier = FaceVerifier.load(tmp_path / "run", device="cpu")
    assert verifier.threshold == pytest.approx(v["threshold"])
    photos = sorted((face_tree / "orl" / "s1").glob("*.pgm"))
    r = verifier.verify(photos[0], photos[0])
    assert r.score == pytest.approx(1.0, abs=1e-5) and r.same


def test_distillation_loss_falls_in_a_real_face_run(face_tree: Path, tmp_path: Path) -> None:
    """train(teacher=...) captures the student's episode embeddings and matches a teacher's."""
    import csv

    import numpy as np
    import torch.nn.functional as F

    from h_model.faces.teachers import TEACHERS, Teacher
    from h_model.trainer import TrainConfig, train

    class PoolTeacher(Teacher):
        """A real, fixed embedder: 8x8 average-pooled pixels through a fixed random projection."""

        name, dim, id = "test-pool", 16, "test-pool-v1"

        def __init__(self, margin: float = 0.2) -> None:
            self.w = torch.randn(3 * 8 * 8, 16, generator=torch.Generator().manual_seed(0))

        def embed_crops(self, images: torch.Tensor) -> np.ndarray:
            x = F.adaptive_avg_pool2d(images.float() / 255, 8).flatten(1) - 0.5
            return F.normalize(x @ self.w, dim=1).numpy()

    if "test-pool" not in TEACHERS:
        TEACHERS.register("test-pool")(PoolTeacher)
    cfg = TrainConfig(variant="proto", backbone="face_resnet",
                      backbone_kwargs={"channels": [8, 8, 16, 16], "dim": 16}, dataset="faces",
                      data_root=str(face_tree), image_size=64, data_kwargs={"split": [1 / 3, 1 / 3, 1 / 3]},
                      teacher="test-pool", distill_embed=1.0, distill_relation=1.0, lr=0.01,
                      episodes=40, train_way=2, train_shot=1, train_query=2, test_way=2, test_shot=1, test_query=2,
                      val_every=40, val_episodes=5, eval_settings=["2w1s"], eval_query=2, eval_episodes=5,
                      log_every=10, out=str(tmp_path / "run"))
    train(cfg)
    with open(tmp_path / "run" / "metrics.csv") as f:
        d = [float(r["distill_loss"]) for r in csv.DictReader(f) if r["distill_loss"]]
    assert len(d) == 4 and d[-1] < 0.85 * d[0], d
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["distill"]["teacher"] == "test-pool-v1"
