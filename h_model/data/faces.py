"""Face datasets: every photo of a ``<set>/<identity>/<image>`` tree detected, aligned and cached once.

:class:`h_model.detect.FaceDetector` (MTCNN, or YuNet with ``detector="yunet"``) finds the largest
face of each photo and cuts the aligned crop (``alignment`` "eyes" or "five_point") exactly as the
verifier does at prediction time, so training crops and query crops come from one code path. Photos without a detectable face are skipped and counted. Each
set is cached on its own (keyed by its file list and the alignment settings), so adding a set
aligns only that set.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..preprocess import ImageDecodeError, Preprocess
from .folder import IMAGE_EXTS, list_class_folders, split_classes
from .imageset import ImageSet, cached, files_fingerprint
from .root import not_found

log = logging.getLogger(__name__)
FACE_MEAN = (0.5, 0.5, 0.5)
FACE_STD = (0.5, 0.5, 0.5)


def face_preprocess(size: int) -> Preprocess:
    """How aligned RGB face crops become model input (stored in every face checkpoint)."""
    return Preprocess(size=(size, size), channels=3, mean=FACE_MEAN, std=FACE_STD)


def face_sets(root: str | Path) -> list[Path]:
    """The class-folder sets under ``root``: ``root`` itself when its folders hold images, else its subfolders."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise not_found("face data", [root], "Expected <root>/<identity>/<photos> or <root>/<set>/<identity>/<photos>.")

    def holds_images(d: Path) -> bool:
        return any(f.suffix.lower() in IMAGE_EXTS for c in d.iterdir() if c.is_dir() for f in c.iterdir())

    if holds_images(root):
        return [root]
    sets = sorted(d for d in root.iterdir() if d.is_dir() and holds_images(d))
    if not sets:
        raise not_found("face photo folders", [root], "Expected <root>/<identity>/<photos> or <root>/<set>/<identity>/<photos>.")
    return sets


def align_paths(paths: Sequence[Path], crop_size: int = 112, margin: float = 0.2, batch: int = 32,
                desc: str = "aligning", alignment: str = "eyes", detector: str = "mtcnn",
                yunet_sure: float | None = None, fuse_landmarks: bool = False,
                fuse_min_face: float = 0.0) -> tuple[torch.Tensor, list[int]]:
    """Aligned uint8 crops ``[M, 3, s, s]`` of the largest face of each photo, and which photos they
    came from; unreadable and faceless photos are skipped and counted in one warning."""
    from ..detect import FaceDetector, load_rgb

    det = FaceDetector(crop_size=crop_size, margin=margin, alignment=alignment, detector=detector,
                       **({} if yunet_sure is None else {"yunet_sure": yunet_sure}),
                       **({"fuse_landmarks": True, "fuse_min_face": fuse_min_face} if fuse_landmarks else {}))
    crops, kept = [], []
    unreadable = faceless = 0
    for i in tqdm(range(0, len(paths), batch), desc=desc, unit="batch", disable=len(paths) <= batch):
        imgs, idx = [], []
        for j in range(i, min(i + batch, len(paths))):
            try:
                imgs.append(load_rgb(paths[j]))
                idx.append(j)
            except ImageDecodeError:
                unreadable += 1
        for j, faces in zip(idx, det.detect_many(imgs) if imgs else []):
            if not faces:
                faceless += 1
                continue
            crops.append(torch.from_numpy(np.array(faces[0].crop)).permute(2, 0, 1))
            kept.append(j)
    if unreadable or faceless:
        where = Path(paths[0]).parent.parent.name if paths else ""
        log.warning("%s: skipped %d unreadable photo(s) and %d without a detectable face (of %d)",
                    where, unreadable, faceless, len(paths))
    images = torch.stack(crops).contiguous() if crops else torch.zeros((0, 3, crop_size, crop_size), dtype=torch.uint8)
    return images, kept


def align_folder(root: str | Path, crop_size: int = 112, margin: float = 0.2, batch: int = 32,
                 cache_dir: Path | str | None = "default", alignment: str = "eyes", detector: str = "mtcnn",
                 yunet_sure: float | None = None, fuse_landmarks: bool = False, fuse_min_face: float = 0.0) -> ImageSet:
    """Aligned ``crop_size`` crops of the largest face of every photo in one class-folder set.

    The photos kept are those MTCNN finds a face in, whatever the ``detector``: another detector
    (``"yunet"``) re-crops exactly those photos, so models with different detectors are trained and
    scored on the same photos and identity splits. ``yunet_sure``: photos in which YuNet finds a face it
    scores under this go to MTCNN (see :class:`h_model.detect.FaceDetector`; None: never);
    ``fuse_landmarks``: YuNet's landmarks averaged with MTCNN's, whose pass ``fuse_min_face`` sizes (the same class)."""
    root = Path(root).expanduser()
    paths, labels, names = list_class_folders([root])
    prep = face_preprocess(crop_size)
    align = "mtcnn-v1" if alignment == "eyes" else f"mtcnn-{alignment}-v1"
    if detector != "mtcnn":
        align = f"{detector}-{alignment}-v1"
        if yunet_sure is not None:  # None keeps the caches made before this setting
            align += f"-sure{yunet_sure:g}"
        if fuse_landmarks:
            align += "-fused" + (f"-min{fuse_min_face:g}" if fuse_min_face else "")
    settings = {"crop": crop_size, "margin": margin if alignment == "eyes" else None, "align": align}
    key = f"faces-{root.name}-" + files_fingerprint(paths, settings)

    def build() -> ImageSet:
        photos, photo_labels, photo_names = paths, labels, names
        if detector != "mtcnn":
            ref = align_folder(root, crop_size, margin, batch, cache_dir, alignment)
            photos, photo_labels, photo_names = [Path(p) for p in ref.sources or []], ref.labels.tolist(), ref.class_names
        crops, kept = align_paths(photos, crop_size, margin, batch, desc=f"aligning {root.name} ({detector})",
                                  alignment=alignment, detector=detector, yunet_sure=yunet_sure,
                                  fuse_landmarks=fuse_landmarks, fuse_min_face=fuse_min_face)
        if not kept:
            raise ValueError(f"no face found in any photo under {root}")
        return ImageSet(crops, torch.as_tensor([photo_labels[j] for j in kept], dtype=torch.long), photo_names, prep,
                        [str(photos[j]) for j in kept])

    return cached(key, build, cache_dir)


def concat_sets(parts: Sequence[ImageSet], prefixes: Sequence[str] | None = None) -> ImageSet:
    """One ImageSet of several (class names prefixed by their set's name when given)."""
    imgs, labs, names, srcs, off = [], [], [], [], 0
    for i, p in enumerate(parts):
        imgs.append(p.images)
        labs.append(p.labels + off)
        names += [f"{prefixes[i]}/{n}" for n in p.class_names] if prefixes else list(p.class_names)
        srcs += p.sources or [""] * len(p)
        off += p.num_classes
    return ImageSet(torch.cat(imgs), torch.cat(labs), names, parts[0].preprocess, srcs)


def crop_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    """:func:`faces_splits` / :func:`aligned_sets` keyword arguments that cut crops as ``settings``
    (a :attr:`h_model.detect.FaceDetector.settings` dict or a face checkpoint's ``"face"`` entry) say."""
    return {"image_size": int(settings["crop_size"]), "margin": float(settings.get("margin", 0.2)),
            "alignment": settings.get("alignment", "eyes"), "detector": settings.get("detector", "mtcnn"),
            "yunet_sure": settings.get("yunet_sure"), "fuse_landmarks": bool(settings.get("fuse_landmarks")),
            "fuse_min_face": float(settings.get("fuse_min_face") or 0.0)}


def faces_splits(data_root: str | Path | None = None, image_size: int = 112, margin: float = 0.2, seed: int = 0,
                 sets: Sequence[str] | None = None, split: tuple[float, float, float] = (0.7, 0.15, 0.15),
                 min_images: int = 2, pack: str | Path | None = None, alignment: str = "eyes",
                 detector: str = "mtcnn", yunet_sure: float | None = None, fuse_landmarks: bool = False,
                 fuse_min_face: float = 0.0) -> tuple[ImageSet, ImageSet, ImageSet]:
    """Identity-disjoint (train, validation, test) aligned-face splits, drawn per set by seed,
    so every set (in-the-wild CelebA included) has held-out identities. Identities with fewer than
    ``min_images`` detected faces are dropped. ``alignment``, ``detector``, ``yunet_sure``, ``fuse_landmarks`` and ``fuse_min_face`` (see
    :func:`align_folder`) say how crops are cut. ``pack``: read the aligned crops from a face pack
    (:mod:`h_model.data.facepack`) instead of aligning photos under ``data_root``."""
    if pack:
        from .facepack import read_facepack

        aligned = read_facepack(pack, sets)
        size = {tuple(s.images.shape[-2:]) for s in aligned.values()}
        if size != {(image_size, image_size)}:
            raise ValueError(f"the pack {pack} holds {sorted(size)} crops, the config asks for {image_size}x{image_size}")
    else:
        aligned = aligned_sets(data_root, image_size, margin, sets, alignment, detector, yunet_sure, fuse_landmarks,
                               fuse_min_face)
    splits: list[list[ImageSet]] = [[], [], []]
    for name, data in aligned.items():
        counts = torch.bincount(data.labels, minlength=data.num_classes)
        data = data.subset([c for c in range(data.num_classes) if counts[c] >= min_images])
        data = ImageSet(data.images, data.labels, [f"{name}/{n}" for n in data.class_names],
                        data.preprocess, data.sources)
        for part, s in zip(splits, split_classes(data, tuple(split), seed)):
            if s.num_classes:
                part.append(s)
    for name, part in zip(("train", "validation", "test"), splits):
        if not part:
            raise ValueError(f"no identities fall in the {name} split (fractions {tuple(split)}, seed {seed}): "
                             "add identities or change the split fractions")
    return tuple(concat_sets(p) for p in splits)  # type: ignore[return-value]


def _select_sets(data_root: str | Path | None, sets: Sequence[str] | None) -> list[Path]:
    """The set folders to read: all under the data root, or ``sets`` in that order."""
    from .root import resolve_data_root

    root = resolve_data_root(data_root)
    if not data_root and (root / "faces").is_dir():  # the shared data layout: <root>/faces/<set>/...
        root = root / "faces"
    found = face_sets(root)
    if sets:
        by_name = {p.name: p for p in found}
        missing = [s for s in sets if s not in by_name]
        if missing:
            raise ValueError(f"unknown face set(s) {missing}; {root} holds {sorted(by_name)}")
        found = [by_name[s] for s in sets]
    return found


def aligned_sets(data_root: str | Path | None = None, image_size: int = 112, margin: float = 0.2,
                 sets: Sequence[str] | None = None, alignment: str = "eyes", detector: str = "mtcnn",
                 yunet_sure: float | None = None, fuse_landmarks: bool = False,
                 fuse_min_face: float = 0.0) -> dict[str, ImageSet]:
    """``{set name: aligned crops}`` of every set (or ``sets``) under the data root (cached)."""
    return {path.name: align_folder(path, image_size, margin, alignment=alignment, detector=detector,
                                    yunet_sure=yunet_sure, fuse_landmarks=fuse_landmarks, fuse_min_face=fuse_min_face)
            for path in _select_sets(data_root, sets)}
