"""Omniglot (Lake et al. 2015) from torchvision's folder layout, standard few-shot protocol.

Train on ``images_background`` characters, each rotated by 0/90/180/270 degrees as four
classes; validate on a seeded, held-out set of background characters (all their rotations);
test on the ``images_evaluation`` characters.
"""
from __future__ import annotations

import logging
import socket
from pathlib import Path

import torch

from ..preprocess import Preprocess
from .imageset import ImageSet, cached, decode_files, files_fingerprint
from .root import not_found, resolve_data_root

log = logging.getLogger(__name__)
SPLITS = {"background": "images_background", "evaluation": "images_evaluation"}
ROTATIONS = (0, 90, 180, 270)


def omniglot_preprocess(image_size: int = 28) -> Preprocess:
    """Grayscale, resized, inverted so strokes are bright: the papers' input."""
    return Preprocess(size=(image_size, image_size), channels=1, invert=True)


def find_omniglot(data_root: str | Path | None, split: str, download: bool = True) -> Path:
    """The ``images_<split>`` folder under the data root, downloading it if allowed."""
    root = resolve_data_root(data_root)
    sub = SPLITS[split]
    candidates = [root / "omniglot-py" / sub, root / sub]
    for c in candidates:
        if c.is_dir():
            return c
    reason = "Download disabled."
    if download:
        try:
            from torchvision.datasets import Omniglot
            old = socket.getdefaulttimeout()
            socket.setdefaulttimeout(20)
            try:
                Omniglot(str(root), background=(split == "background"), download=True)
            finally:
                socket.setdefaulttimeout(old)
            if candidates[0].is_dir():
                return candidates[0]
        except Exception as e:  # offline, blocked, disk full: say so plainly
            reason = f"Download through torchvision failed: {type(e).__name__}: {e}"
    raise not_found(f"Omniglot '{sub}'", candidates, reason)


def load_omniglot_split(data_root: str | Path | None, split: str, prep: Preprocess,
                        cache_dir: Path | str | None = "default", download: bool = True) -> ImageSet:
    """All characters of one split (no rotations), decoded once and cached on disk."""
    folder = find_omniglot(data_root, split, download)
    chars = sorted(p for p in folder.glob("*/*") if p.is_dir())
    paths, labels = [], []
    for i, c in enumerate(chars):
        for f in sorted(c.glob("*.png")):
            paths.append(f)
            labels.append(i)
    if not chars:
        raise not_found(f"Omniglot characters in {folder}", [folder], "The folder holds no <alphabet>/<character>/ folders.")
    names = [f"{c.parent.name}/{c.name}" for c in chars]
    key = f"omniglot-{split}-" + files_fingerprint(paths, {"prep": prep.to_dict()})

    def build() -> ImageSet:
        imgs, labs, src = decode_files(paths, labels, prep, desc=f"decoding Omniglot {split}")
        return ImageSet(imgs, labs, names, prep, src)

    return cached(key, build, cache_dir)


def omniglot_splits(data_root: str | Path | None = None, image_size: int = 28, val_classes: int = 64,
                    seed: int = 0, rotations: tuple[int, ...] = ROTATIONS,
                    cache_dir: Path | str | None = "default", download: bool = True
                    ) -> tuple[ImageSet, ImageSet, ImageSet]:
    """(train, validation, test) ImageSets; validation characters are disjoint from training."""
    prep = omniglot_preprocess(image_size)
    bg = load_omniglot_split(data_root, "background", prep, cache_dir, download)
    ev = load_omniglot_split(data_root, "evaluation", prep, cache_dir, download)
    return (*split_background(bg, val_classes, seed, rotations), ev)


def split_background(bg: ImageSet, val_classes: int = 64, seed: int = 0,
                     rotations: tuple[int, ...] = ROTATIONS) -> tuple[ImageSet, ImageSet]:
    """(train, validation) from the background characters: ``val_classes`` seeded characters
    for validation, the rest for training, each rotation a class of its own."""
    val_ids, train_ids = held_out_ids(bg.num_classes, val_classes, seed)
    return bg.subset(train_ids).with_rotations(rotations), bg.subset(val_ids).with_rotations(rotations)


def held_out_ids(num_characters: int, val_classes: int = 64, seed: int = 0) -> tuple[list[int], list[int]]:
    """(validation, training) character indices into the sorted background characters."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(num_characters, generator=g).tolist()
    return sorted(perm[:val_classes]), sorted(perm[val_classes:])


def background_characters(folder: str | Path) -> list[str]:
    """``Alphabet/character`` names of an ``images_background`` folder, in the order
    :func:`load_omniglot_split` numbers them (so :func:`held_out_ids` indexes this list)."""
    return [f"{c.parent.name}/{c.name}" for c in sorted(p for p in Path(folder).glob("*/*") if p.is_dir())]


def validation_characters(folder: str | Path, val_classes: int = 64, seed: int = 0) -> list[str]:
    """The background characters :func:`split_background` holds out for validation."""
    names = background_characters(folder)
    if not names:
        raise ValueError(f"{folder} holds no <alphabet>/<character>/ folders")
    return [names[i] for i in held_out_ids(len(names), val_classes, seed)[0]]
