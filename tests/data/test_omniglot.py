import socket

import pytest
import torch

from h_model.data import DataNotFoundError, omniglot_splits
from h_model.data.omniglot import find_omniglot


def test_missing_root_offline_names_every_path(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise OSError("network is unreachable (test)")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    with pytest.raises(DataNotFoundError) as e:
        find_omniglot(tmp_path / "empty", "background", download=True)
    msg = str(e.value)
    assert str(tmp_path / "empty" / "omniglot-py" / "images_background") in msg
    assert "Download through torchvision failed" in msg
    assert "--data-root" in msg and "H_DATA_ROOT" in msg


def test_env_var_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("H_DATA_ROOT", str(tmp_path / "from_env"))
    with pytest.raises(DataNotFoundError, match="from_env"):
        find_omniglot(None, "evaluation", download=False)


def test_real_omniglot_protocol(data_root):
    train, val, test = omniglot_splits(data_root, image_size=28, val_classes=64, seed=0)
    assert train.num_classes == (964 - 64) * 4 and val.num_classes == 64 * 4
    assert test.num_classes == 659 and len(test) == 659 * 20
    assert train.images.shape[1:] == (1, 28, 28) and train.images.dtype.is_floating_point is False
    base = lambda s: {n.split("@")[0] for n in s.class_names}  # noqa: E731
    assert not (base(train) & base(val)), "validation characters leak into training"
    # strokes are bright on a dark background after inversion
    assert float(test.images.float().mean()) < 60


def test_saved_background_gives_the_same_splits_and_task(data_root, tmp_path):
    from h_model.data.imageset import ImageSet
    from h_model.data.omniglot import load_omniglot_split, omniglot_preprocess, split_background
    from h_model.search.task import omniglot_task
    bg = load_omniglot_split(data_root, "background", omniglot_preprocess(28))
    bg.save(tmp_path / "bg.pt")
    loaded = ImageSet.load(tmp_path / "bg.pt")
    assert torch.equal(loaded.images, bg.images) and loaded.class_names == bg.class_names
    train, val, _ = omniglot_splits(data_root, image_size=28, val_classes=64, seed=3)
    t2, v2 = split_background(loaded, 64, seed=3)
    assert torch.equal(train.images, t2.images) and torch.equal(val.labels, v2.labels)
    a, b = omniglot_task(data_root, seed=3), omniglot_task(seed=3, background=loaded)
    assert a.val.class_names == b.val.class_names and torch.equal(a.train.images, b.train.images)
    with pytest.raises(ValueError, match="not 32px"):
        omniglot_task(image_size=32, background=loaded)
