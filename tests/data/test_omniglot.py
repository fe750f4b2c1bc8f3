import socket

import pytest

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
