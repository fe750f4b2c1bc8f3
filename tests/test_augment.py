"""Batched augmentation: shapes, determinism from a generator, and each transform's effect."""
from __future__ import annotations

import torch

from h_model.augment import Augment


def test_shapes_and_determinism() -> None:
    x = torch.rand(2, 6, 3, 16, 16)
    a = Augment()
    y1 = a(x, torch.Generator().manual_seed(0))
    y2 = a(x, torch.Generator().manual_seed(0))
    assert y1.shape == x.shape and torch.equal(y1, y2)
    assert not torch.equal(y1, a(x, torch.Generator().manual_seed(1)))


def test_flip_only_mirrors() -> None:
    x = torch.rand(8, 1, 4, 4)
    y = Augment(flip=1.0, brightness=0, contrast=0, rotate_deg=0, scale=0, shift=0)(x)
    assert torch.equal(y, x.flip(-1))


def test_identity_when_everything_is_off() -> None:
    x = torch.rand(3, 3, 8, 8)
    assert torch.equal(Augment(0, 0, 0, 0, 0, 0)(x), x)


def test_brightness_shifts_the_mean_only() -> None:
    x = torch.rand(64, 1, 8, 8)
    y = Augment(flip=0, brightness=0.5, contrast=0, rotate_deg=0, scale=0, shift=0)(x)
    d = y - x
    assert torch.allclose(d, d[:, :, :1, :1].expand_as(d), atol=1e-6)  # one constant per image
    assert d.abs().max() <= 0.5 + 1e-6 and d.abs().max() > 0.1


def test_from_config() -> None:
    assert Augment.from_config(False) is None and Augment.from_config(None) is None
    assert Augment.from_config(True) == Augment()
    assert Augment.from_config({"flip": 0.0}).flip == 0.0
