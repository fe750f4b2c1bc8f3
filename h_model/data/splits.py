"""Named datasets -> (train, validation, test) ImageSets, from a checkpoint's data config."""
from __future__ import annotations

from typing import Any, Callable

from ..preprocess import Preprocess
from ..registry import Registry
from .faces import faces_splits
from .folder import load_folder, split_classes
from .imageset import ImageSet
from .omniglot import omniglot_splits

DATASETS = Registry("dataset")
Splits = tuple[ImageSet, ImageSet, ImageSet]


@DATASETS.register("omniglot")
def _omniglot(data_root: str | None = None, image_size: int = 28, seed: int = 0, val_classes: int = 64,
              download: bool = True, **_: Any) -> Splits:
    return omniglot_splits(data_root, image_size, val_classes=val_classes, seed=seed, download=download)


@DATASETS.register("folder")
def _folder(data_root: str | list[str] | None = None, image_size: int = 84, channels: int = 3, seed: int = 0,
            split: tuple[float, float, float] = (0.7, 0.15, 0.15), **_: Any) -> Splits:
    if not data_root:
        raise ValueError("--dataset folder needs --data-root DIR (a <root>/<class>/<image> tree)")
    prep = Preprocess(size=(image_size, image_size), channels=channels)
    return split_classes(load_folder(data_root, prep), tuple(split), seed)


@DATASETS.register("faces")
def _faces(data_root: str | None = None, image_size: int = 112, seed: int = 0, margin: float = 0.2,
           sets: list[str] | None = None, split: tuple[float, float, float] = (0.7, 0.15, 0.15),
           pack: str | None = None, alignment: str = "eyes", detector: str = "mtcnn",
           yunet_sure: float | None = None, fuse_landmarks: bool = False, fuse_min_face: float = 0.0,
           **_: Any) -> Splits:
    """Aligned face crops (``alignment``: "eyes" or "five_point"; ``detector``: "mtcnn" or "yunet", with ``yunet_sure``,
    ``fuse_landmarks`` and ``fuse_min_face`` as in :class:`h_model.detect.FaceDetector`); ``data_root`` is one
    <identity>/<photos> set or a folder of such sets, ``pack`` a face pack folder
    (``python -m h_model.faces pack``) used instead of the photos."""
    return faces_splits(data_root, image_size, margin, seed, sets, tuple(split), pack=pack, alignment=alignment,
                        detector=detector, yunet_sure=yunet_sure, fuse_landmarks=fuse_landmarks,
                        fuse_min_face=fuse_min_face)


def load_splits(name: str, **kwargs: Any) -> Splits:
    """``load_splits('omniglot', data_root=..., image_size=28, seed=0)``."""
    fn: Callable[..., Splits] = DATASETS.get(name)
    return fn(**kwargs)
