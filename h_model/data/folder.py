"""Any ``<root>/<class>/<image>`` tree (face sets, a user's own data) as an ImageSet."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..preprocess import Preprocess
from .imageset import ImageSet, cached, decode_files, files_fingerprint
from .root import not_found

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm", ".tif", ".tiff", ".webp"}


def list_class_folders(roots: Sequence[str | Path]) -> tuple[list[Path], list[int], list[str]]:
    """Image files, their class indices and class names over one or several class-folder roots."""
    paths: list[Path] = []
    labels: list[int] = []
    names: list[str] = []
    for root in roots:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise not_found("class-folder dataset", [root])
        for cdir in sorted(p for p in root.iterdir() if p.is_dir()):
            files = sorted(f for f in cdir.iterdir() if f.suffix.lower() in IMAGE_EXTS and f.is_file())
            if not files:
                continue
            names.append(f"{root.name}/{cdir.name}" if len(roots) > 1 else cdir.name)
            paths += files
            labels += [len(names) - 1] * len(files)
    if not names:
        raise not_found("class folders with images", [Path(r) for r in roots],
                        "Expected <root>/<class>/<image files>.")
    return paths, labels, names


def load_folder(roots: str | Path | Sequence[str | Path], prep: Preprocess,
                cache_dir: Path | str | None = "default") -> ImageSet:
    """Decode every image of the class folders once (cached on disk by a file-list checksum)."""
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    paths, labels, names = list_class_folders(roots)
    key = "folder-" + files_fingerprint(paths, {"prep": prep.to_dict()})

    def build() -> ImageSet:
        imgs, labs, src = decode_files(paths, labels, prep, desc="decoding images")
        return ImageSet(imgs, labs, names, prep, src)

    return cached(key, build, cache_dir)


def split_classes(data: ImageSet, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                  seed: int = 0) -> tuple[ImageSet, ImageSet, ImageSet]:
    """Seeded class-disjoint (train, validation, test) split; never splits a class's images."""
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    n = data.num_classes
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    parts = perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]
    return tuple(data.subset(sorted(p)) for p in parts)  # type: ignore[return-value]
