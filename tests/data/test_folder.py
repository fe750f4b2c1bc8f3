import logging

import numpy as np
import pytest
import torch
from PIL import Image

from h_model.data import DataNotFoundError, load_folder, split_classes
from h_model.data.imageset import decode_files
from h_model.preprocess import Preprocess

PREP = Preprocess(size=(8, 8), channels=3)


def make_tree(root, classes=6, per_class=3):
    for c in range(classes):
        d = root / f"person_{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((10, 12, 3), (20 * c + i) % 256, np.uint8)).save(d / f"{i}.png")
    return root


def test_folder_dataset_skips_corrupt_images(tmp_path, caplog):
    root = make_tree(tmp_path / "faces")
    (root / "person_0" / "broken.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    (root / "person_1" / "notes.txt").write_text("ignored: not an image extension")
    with caplog.at_level(logging.WARNING):
        data = load_folder(root, PREP, cache_dir=None)
    assert "skipped 1 unreadable image" in caplog.text
    assert len(data) == 18 and data.num_classes == 6
    assert data.images.shape == (18, 3, 8, 8)
    assert data.class_names[0] == "person_0"


def test_cache_round_trip_and_invalidation(tmp_path):
    root = make_tree(tmp_path / "faces")
    cache = tmp_path / "cache"
    a = load_folder(root, PREP, cache_dir=cache)
    assert len(list(cache.glob("*.pt"))) == 1
    b = load_folder(root, PREP, cache_dir=cache)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(root / "person_0" / "new.png")
    c = load_folder(root, PREP, cache_dir=cache)
    assert len(c) == len(a) + 1
    assert len(list(cache.glob("*.pt"))) == 2


def test_split_is_class_disjoint_and_seeded(tmp_path):
    data = load_folder(make_tree(tmp_path / "f", classes=20), PREP, cache_dir=None)
    tr, va, te = split_classes(data, (0.6, 0.2, 0.2), seed=3)
    names = [set(s.class_names) for s in (tr, va, te)]
    assert [len(n) for n in names] == [12, 4, 4]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    assert split_classes(data, (0.6, 0.2, 0.2), seed=3)[2].class_names == te.class_names
    assert split_classes(data, (0.6, 0.2, 0.2), seed=4)[2].class_names != te.class_names
    with pytest.raises(ValueError):
        split_classes(data, (0.5, 0.2, 0.2))


def test_missing_folder_names_the_path(tmp_path):
    with pytest.raises(DataNotFoundError, match="nowhere"):
        load_folder(tmp_path / "nowhere", PREP, cache_dir=None)


def test_decode_files_keeps_labels_aligned(tmp_path):
    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((4, 4), 50 * i, np.uint8)).save(p)
        paths.append(p)
    paths[2].write_bytes(b"garbage")
    imgs, labels, sources = decode_files(paths, [0, 1, 2, 3], Preprocess(size=(4, 4)))
    assert labels.tolist() == [0, 1, 3]
    assert sources == [str(paths[i]) for i in (0, 1, 3)]
    assert imgs[:, 0, 0, 0].tolist() == [0, 50, 150]
