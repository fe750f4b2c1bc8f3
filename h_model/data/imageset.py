"""ImageSet: a whole dataset decoded once into one uint8 tensor, plus its on-disk cache."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm import tqdm

from ..preprocess import ImageDecodeError, Preprocess, load_image

log = logging.getLogger(__name__)
CACHE_VERSION = 2


@dataclass
class ImageSet:
    """Decoded images ``[N, C, H, W]`` uint8 with class labels ``[N]`` in ``0..C-1``."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    preprocess: Preprocess
    sources: list[str] | None = None  # the file each image was decoded from, when known

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError("images must be a uint8 [N, C, H, W] tensor")
        if len(self.labels) != len(self.images):
            raise ValueError("images and labels differ in length")
        if self.sources is not None and len(self.sources) != len(self.images):
            raise ValueError("sources and images differ in length")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, class_ids: Sequence[int]) -> "ImageSet":
        """The images of ``class_ids`` only, relabelled 0..len(class_ids)-1 in that order."""
        class_ids = torch.as_tensor(list(class_ids), dtype=torch.long)
        remap = torch.full((self.num_classes,), -1, dtype=torch.long)
        remap[class_ids] = torch.arange(len(class_ids))
        new = remap[self.labels]
        keep = new >= 0
        src = None if self.sources is None else [s for s, k in zip(self.sources, keep.tolist()) if k]
        return ImageSet(self.images[keep], new[keep], [self.class_names[i] for i in class_ids.tolist()],
                        self.preprocess, src)

    def save(self, path: str | Path) -> None:
        """Write the set to one ``torch.save`` file atomically (read back with :meth:`load`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            torch.save({"images": self.images, "labels": self.labels, "class_names": self.class_names,
                        "preprocess": self.preprocess.to_dict(), "sources": self.sources}, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @staticmethod
    def load(path: str | Path) -> "ImageSet":
        """A set written by :meth:`save` (tensors and plain types only: ``weights_only`` loading)."""
        d = torch.load(path, weights_only=True)
        return ImageSet(d["images"], d["labels"], list(d["class_names"]),
                        Preprocess.from_dict(d["preprocess"]), d.get("sources"))

    def with_rotations(self, degrees: Sequence[int]) -> "ImageSet":
        """Each (class, rotation) becomes a new class, as in the Omniglot few-shot protocol."""
        imgs, labels, names = [], [], []
        for j, deg in enumerate(degrees):
            if deg % 90:
                raise ValueError("rotations must be multiples of 90 degrees")
            imgs.append(torch.rot90(self.images, k=deg // 90, dims=(2, 3)))
            labels.append(self.labels + j * self.num_classes)
            names += [f"{n}@rot{deg}" for n in self.class_names]
        src = None if self.sources is None else self.sources * len(degrees)
        return ImageSet(torch.cat(imgs).contiguous(), torch.cat(labels), names, self.preprocess, src)


def decode_files(paths: Sequence[Path], labels: Sequence[int], prep: Preprocess,
                 desc: str = "decoding") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode files in parallel: (images, labels, sources) of the readable ones.

    Unreadable files are skipped and counted in one warning.
    """
    h, w = prep.size
    out = torch.empty((len(paths), prep.channels, h, w), dtype=torch.uint8)
    ok = torch.zeros(len(paths), dtype=torch.bool)
    bad: list[str] = []

    def work(i: int) -> None:
        try:
            out[i] = load_image(paths[i], prep)
            ok[i] = True
        except ImageDecodeError:
            bad.append(str(paths[i]))

    workers = min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(workers) as ex:
        list(tqdm(ex.map(work, range(len(paths))), total=len(paths), desc=desc, unit="img",
                  leave=False, disable=len(paths) < 2000))
    if bad:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(bad), ", ".join(sorted(bad)[:3]))
    lab = torch.as_tensor(list(labels), dtype=torch.long)
    return out[ok].contiguous(), lab[ok], [str(p) for p, k in zip(paths, ok.tolist()) if k]


def files_fingerprint(paths: Sequence[Path], extra: dict) -> str:
    """A hash of the file list (names, sizes, mtimes) and the decoding settings."""
    h = hashlib.sha256(json.dumps({"v": CACHE_VERSION, **extra}, sort_keys=True).encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def default_cache_dir() -> Path:
    return Path(os.environ.get("H_CACHE_DIR", Path.home() / ".cache" / "h_model"))


def cached(key: str, build: Callable[[], ImageSet], cache_dir: Path | str | None) -> ImageSet:
    """Load ``key`` from ``cache_dir`` if present, else build it and write it atomically.

    ``"default"`` means :func:`default_cache_dir` at call time; ``None`` turns caching off.
    """
    if cache_dir is None:
        return build()
    if cache_dir == "default":
        cache_dir = default_cache_dir()
    path = Path(cache_dir) / f"{key}.pt"
    if path.exists():
        try:
            return ImageSet.load(path)
        except Exception as e:  # a corrupt cache file is rebuilt, never fatal
            log.warning("ignoring unreadable cache %s (%s)", path, e)
    s = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        s.save(path)
    except OSError as e:
        log.warning("could not write cache %s (%s)", path, e)
    return s
