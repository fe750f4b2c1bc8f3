"""Face datasets: MTCNN alignment of real photos, skipping what cannot be used, caching, identity splits."""
from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from h_model.data import DataNotFoundError, load_splits
from h_model.data.facepack import read_facepack, write_facepack
from h_model.data.faces import align_folder, aligned_sets, face_sets, faces_splits
from h_model.faces.teachers import TEACHERS, Teacher, load_teacher, save_precomputed, teacher_embeddings


class PoolTeacher(Teacher):
    """A real, fixed embedder: 8x8 average-pooled pixels through a fixed random projection."""

    name, dim, id = "test-pool", 16, "test-pool-v1"

    def __init__(self, margin: float = 0.2) -> None:
        self.w = torch.randn(3 * 8 * 8, 16, generator=torch.Generator().manual_seed(0))
        self.margin = margin

    @property
    def settings(self) -> dict:
        return {"margin": self.margin}

    def embed_crops(self, images: torch.Tensor) -> np.ndarray:
        x = F.adaptive_avg_pool2d(images.float() / 255, 8).flatten(1) - 0.5
        return F.normalize(x @ self.w, dim=1).numpy()


if "test-pool" not in TEACHERS:
    TEACHERS.register("test-pool")(PoolTeacher)


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
    """Training crops and prediction-time crops come from the same detector and alignment.

    The dataset runs MTCNN over photos of one size together and the verifier over one photo: the
    batched convolutions round differently (landmarks within 1e-4 px), so a pixel may differ by one
    grey level, no more."""
    import numpy as np

    from h_model.faces import FaceDetector

    s = align_folder(face_tree / "casia_facev5_subset", crop_size=64, cache_dir=tmp_path)
    det = FaceDetector(crop_size=64, margin=0.2)
    for i, src in enumerate(s.sources):
        crop = np.asarray(det.detect(src)[0].crop, np.int16)
        diff = np.abs(crop - s.images[i].permute(1, 2, 0).numpy().astype(np.int16))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.005, (src, diff.max(), (diff > 0).mean())


def test_yunet_crops_the_photos_mtcnn_keeps(face_tree: Path, tmp_path: Path) -> None:
    """Another detector re-crops exactly MTCNN's photos (same splits), cached under its own key."""
    import numpy as np

    from h_model.faces import FaceDetector

    ref = align_folder(face_tree / "orl", crop_size=64, cache_dir=tmp_path, alignment="five_point")
    y = align_folder(face_tree / "orl", crop_size=64, cache_dir=tmp_path, alignment="five_point", detector="yunet")
    assert y.sources == ref.sources and torch.equal(y.labels, ref.labels) and y.class_names == ref.class_names
    assert not torch.equal(y.images, ref.images)  # YuNet's landmarks, not MTCNN's
    assert len(list(tmp_path.glob("faces-orl-*.pt"))) == 2
    crop = FaceDetector(crop_size=64, alignment="five_point", detector="yunet").detect(y.sources[0])[0].crop
    assert np.array_equal(np.asarray(crop), y.images[0].permute(1, 2, 0).numpy())
    parts = faces_splits(face_tree, image_size=64, split=(1 / 3, 1 / 3, 1 / 3), seed=0, alignment="five_point")
    parts_y = load_splits("faces", data_root=str(face_tree), image_size=64, seed=0, split=(1 / 3, 1 / 3, 1 / 3),
                          alignment="five_point", detector="yunet")
    assert [p.sources for p in parts_y] == [p.sources for p in parts]


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
    from h_model.faces.training import TrainConfig, train

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
    from h_model.faces.training import TrainConfig, train

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


def test_face_pack_gives_the_same_splits_without_the_photos(face_tree: Path, tmp_path: Path) -> None:
    split = (1 / 3, 1 / 3, 1 / 3)
    from_photos = faces_splits(face_tree, image_size=64, split=split, seed=0)
    pack = write_facepack(tmp_path / "lossless", aligned_sets(face_tree, 64), quality=100)
    from_pack = faces_splits(pack=pack, image_size=64, split=split, seed=0)
    for a, b in zip(from_photos, from_pack):
        assert a.class_names == b.class_names and torch.equal(a.labels, b.labels)
        assert torch.equal(a.images, b.images)  # lossless WebP: the very crops
        assert b.sources == ["/".join(Path(x).parts[-3:]) for x in a.sources]
    lossy = write_facepack(tmp_path / "lossy", aligned_sets(face_tree, 64), quality=85)
    assert (lossy / "crops.bin").stat().st_size < (pack / "crops.bin").stat().st_size / 2
    part = load_splits("faces", pack=str(lossy), image_size=64, seed=0, split=split)[0]
    diff = (part.images.float() - from_photos[0].images.float()).abs().mean().item()
    assert 0 < diff < 4.0, diff
    assert list(read_facepack(lossy, ["orl"])) == ["orl"]


def test_face_pack_errors(face_tree: Path, tmp_path: Path) -> None:
    pack = write_facepack(tmp_path / "p", aligned_sets(face_tree, 64, sets=["orl"]))
    with pytest.raises(ValueError, match="holds \\[\\(64, 64\\)\\] crops, the config asks for 112x112"):
        faces_splits(pack=pack, image_size=112)
    with pytest.raises(ValueError, match="unknown face set"):
        read_facepack(pack, ["lfw"])
    with pytest.raises(DataNotFoundError, match="face pack"):
        read_facepack(tmp_path / "nowhere")
    raw = (pack / "crops.bin").read_bytes()
    (pack / "crops.bin").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated"):
        read_facepack(pack)
    with pytest.raises(ValueError, match="quality"):
        write_facepack(tmp_path / "q", {"orl": aligned_sets(face_tree, 64, sets=["orl"])["orl"]}, quality=0)


def test_precomputed_teacher_distils_where_the_teacher_is_not_installed(face_tree: Path, tmp_path: Path) -> None:
    """Pack + teacher file written where the photos and the teacher are; training reads only those."""
    from h_model.faces.training import TrainConfig, train

    split = [1 / 3, 1 / 3, 1 / 3]
    pack = write_facepack(tmp_path / "pack", aligned_sets(face_tree, 64), quality=100)
    teacher = load_teacher("test-pool")
    train_set = faces_splits(face_tree, image_size=64, split=tuple(split), seed=0)[0]
    z = teacher_embeddings(teacher, train_set.images, cache_dir=None)
    file = save_precomputed(pack / "teacher-test-pool.pt", teacher, z, train_set.sources)
    pre = load_teacher("precomputed", file=file)
    assert (pre.name, pre.id, pre.dim) == ("test-pool", "test-pool-v1", 16)
    assert torch.equal(pre.lookup(train_set.sources[::-1]), z.flip(0))  # by photo, full path or short name
    with pytest.raises(KeyError, match="no precomputed embedding"):
        pre.lookup(["orl/s99/1.pgm"])
    with pytest.raises(TypeError, match="cannot embed pixels"):
        pre.embed_crops(train_set.images)
    with pytest.raises(ValueError, match="margin"):
        load_teacher("precomputed", file=file, margin=0.3)
    cfg = TrainConfig(variant="proto", backbone="face_resnet",
                      backbone_kwargs={"channels": [8, 8, 16, 16], "dim": 16}, dataset="faces",
                      image_size=64, data_kwargs={"split": split, "pack": str(pack)},
                      teacher="precomputed", teacher_kwargs={"file": str(file)}, lr=0.01,
                      episodes=4, train_way=2, train_shot=1, train_query=2, test_way=2, test_shot=1, test_query=2,
                      val_every=4, val_episodes=5, eval_settings=["2w1s"], eval_query=2, eval_episodes=5,
                      log_every=2, out=str(tmp_path / "run"))
    train(cfg)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["distill"]["teacher"] == "test-pool-v1"
    with open(tmp_path / "run" / "metrics.csv") as f:
        assert all(float(r["distill_loss"]) > 0 for r in csv.DictReader(f) if r["distill_loss"])


def test_pack_command_line(face_tree: Path, tmp_path: Path, capsys) -> None:
    from h_model.faces.__main__ import main

    out = tmp_path / "pack"
    args = ["pack", str(out), "--data-root", str(face_tree), "--image-size", "64", "--teacher", "test-pool"]
    assert main(args) == 2  # default fractions leave 3 identities per set no test identity
    assert "no identities fall in the validation split" in json.loads(capsys.readouterr().out)["error"]
    assert main(args + ["--split", "0.34,0.33,0.33"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sets"] == {"casia_facev5_subset": 9, "orl": 9}
    train = faces_splits(face_tree, image_size=64, split=(0.34, 0.33, 0.33))[0]
    assert summary["teacher_crops"] == len(train)
    pre = load_teacher("precomputed", file=out / "teacher-test-pool.pt")
    assert torch.allclose(pre.lookup(train.sources), torch.from_numpy(PoolTeacher().embed_crops(train.images)))
    assert main(["pack", str(tmp_path / "p2"), "--data-root", str(tmp_path / "missing")]) == 2
    assert "error" in json.loads(capsys.readouterr().out)
