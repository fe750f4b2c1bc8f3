"""Face verification and identification with any h_model checkpoint trained on face crops.

A face checkpoint is an ordinary h_model checkpoint directory (RGB ``preprocess``, e.g. 160x160)
whose ``config.json`` may carry a ``"face"`` entry::

    "face": {"threshold": 0.62, "far": 0.001, "crop_size": 160, "margin": 0.2, "alignment": "eyes",
             "detector": "mtcnn"}      # or "detector": "yunet", "yunet_sure": 0.9, "fuse_landmarks": true,
                                       #    "fuse_min_face": 0.7

``threshold``/``far`` come from :func:`calibrate_threshold` + :func:`save_threshold` on
validation pairs; ``crop_size``/``margin``/``alignment``/``detector``/``yunet_sure``/``fuse_landmarks``/``fuse_min_face``
say how the training crops were detected and aligned (defaults: the preprocess size, 0.2, ``"eyes"``,
``"mtcnn"``, none, false and 0; see :mod:`h_model.detect`), so verification crops faces exactly as training did.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence, overload

import numpy as np
import torch
from PIL import Image

from ..checkpoint import resolve_checkpoint, write_json
from ..learner import Learner
from ..models.fold import fold_batchnorm
from ..preprocess import ImageDecodeError, ImageInput
from .detect import Face, FaceDetector, NoFaceError, load_rgb
from .scores import calibrate_threshold, cosine, l2_normalize

__all__ = ["FaceVerifier", "VerifyResult", "NoModelError", "calibrate_threshold", "save_threshold",
           "cosine", "l2_normalize", "bundled_face_model"]

DEFAULT_MARGIN = 0.2


class NoModelError(ValueError):
    """No face checkpoint was given (and none is bundled)."""


@dataclass
class VerifyResult:
    """``same`` is ``score >= threshold``; ``score`` is the cosine similarity (higher = more alike);
    ``crops``: the two aligned faces compared."""

    same: bool
    score: float
    threshold: float
    far: float | None = None
    faces: tuple[int, int] = (1, 1)
    boxes: list[list[float]] = field(default_factory=list)
    crops: tuple[Image.Image, Image.Image] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Every field but the aligned ``crops`` (JSON-ready)."""
        return {k: v for k, v in asdict(replace(self, crops=None)).items() if k != "crops"}


def save_threshold(checkpoint: str | Path, threshold: float, far: float | None = None, **extra: Any) -> Path:
    """Store the decision threshold under ``"face"`` in the checkpoint's config.json (atomic rewrite)."""
    _, cfg_path = resolve_checkpoint(checkpoint)
    config = json.loads(cfg_path.read_text())
    face = dict(config.get("face") or {})
    face.update({"threshold": float(threshold), "far": None if far is None else float(far), **extra})
    config["face"] = face
    write_json(cfg_path, config)
    return cfg_path


def bundled_face_model(hint: str) -> Path:
    """The bundled face checkpoint; :class:`NoModelError` (its message ending in ``hint``, what to
    do instead) when it is missing."""
    from ..bundled import bundled_path

    try:
        return bundled_path("faces")
    except FileNotFoundError as e:
        raise NoModelError(f"{e}; {hint}") from e


#: Detector settings that choose which face is embedded but not how a face becomes an embedding:
#: left out of the model fingerprint, so changing them keeps a gallery's embeddings usable.
FACE_CHOICE_SETTINGS = ("yunet_sure",)


def model_fingerprint(checkpoint: str | Path, detector_settings: dict[str, Any]) -> str:
    """Identity of what produces an embedding: weights bytes, preprocess and crop alignment (not
    :data:`FACE_CHOICE_SETTINGS`)."""
    weights, cfg_path = resolve_checkpoint(checkpoint)
    h = hashlib.sha256()
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    config = json.loads(cfg_path.read_text())
    h.update(json.dumps({"preprocess": config.get("preprocess"), "model": config.get("model"),
                         "align": {k: v for k, v in detector_settings.items() if k not in FACE_CHOICE_SETTINGS}},
                        sort_keys=True).encode())
    return "sha256:" + h.hexdigest()[:24]


def align_settings(learner: Learner) -> dict[str, Any]:
    """Crop size, margin, alignment, detector, ``yunet_sure``, ``fuse_landmarks`` and ``fuse_min_face`` the
    checkpoint was made for (config "face"), else its input size, 0.2, "eyes", "mtcnn", none, false and 0 (the
    last five named only when they differ, as :attr:`FaceDetector.settings`)."""
    face = dict(learner.config.get("face") or {})
    out: dict[str, Any] = {"crop_size": int(face.get("crop_size") or max(learner.preprocess.size)),
                           "margin": float(face.get("margin", DEFAULT_MARGIN))}
    if face.get("alignment", "eyes") != "eyes":
        out["alignment"] = str(face["alignment"])
    if face.get("detector", "mtcnn") != "mtcnn":
        out["detector"] = str(face["detector"])
        if face.get("yunet_sure") is not None:
            out["yunet_sure"] = float(face["yunet_sure"])
        if face.get("fuse_landmarks"):
            out["fuse_landmarks"] = True
            if face.get("fuse_min_face"):
                out["fuse_min_face"] = float(face["fuse_min_face"])
    return out


class FaceVerifier:
    """Detect + align faces, embed them with a checkpoint's :class:`Learner`, compare by cosine."""

    def __init__(self, learner: Learner, detector: FaceDetector | None = None, threshold: float | None = None,
                 far: float | None = None, model_id: str | None = None) -> None:
        self.learner = learner
        face = dict(learner.config.get("face") or {})
        self.detector = detector or FaceDetector(**align_settings(learner), device=learner.device)
        t = threshold if threshold is not None else face.get("threshold")
        self.threshold = None if t is None else float(t)
        self.far = far if far is not None else face.get("far")
        # a verifier built from an in-memory learner has no durable identity (galleries need load())
        self.model_id = model_id or "unsaved:" + hex(id(learner.model))

    @classmethod
    def load(cls, path: str | Path | None, device: str | torch.device | None = "auto",
             threshold: float | None = None, **detector_kwargs: Any) -> "FaceVerifier":
        """Load a face checkpoint (run directory or ``model.safetensors``); ``None`` = the bundled model.

        ``detector_kwargs`` override the :class:`FaceDetector` settings (crop_size, margin, ...).
        The loaded model is for inference: its BatchNorm layers are folded into the convolutions
        before them (:func:`~h_model.models.fold.fold_batchnorm`).
        """
        if path is None:
            path = bundled_face_model("pass a face checkpoint, e.g. FaceVerifier.load('runs/faces') "
                                      "or --model PATH on the command line")
        learner = Learner.load(path, device)
        fold_batchnorm(learner.model)  # an inference-only copy: same embeddings to float rounding, faster
        detector = FaceDetector(**{**align_settings(learner), **detector_kwargs, "device": learner.device})
        return cls(learner, detector, threshold, model_id=model_fingerprint(path, detector.settings))

    # -- detection and embedding -------------------------------------------------------------
    def detect(self, image: ImageInput) -> list[Face]:
        """Every face of one image, largest first (:class:`NoFaceError` when none)."""
        return self.detector.detect(image)

    def embed_crops(self, crops: Sequence[ImageInput], normalize: bool = True) -> np.ndarray:
        """Embeddings of already aligned face crops, through the checkpoint's own preprocessing."""
        z = self.learner.embed(_image_list(crops))
        return l2_normalize(z) if normalize else z.astype(np.float32)

    def embed(self, images: Sequence[ImageInput], normalize: bool = True) -> np.ndarray:
        """``[n, d]`` embeddings of each image's largest face (L2-normalised unless ``normalize=False``).

        Raises :class:`NoFaceError` (``.index`` = the image) when an image has no face.
        """
        faces = self.detector.largest(_image_list(images))
        return self.embed_crops([f.crop for f in faces], normalize)

    def find_each(self, images: Sequence[ImageInput], max_faces: int | None = None
                  ) -> tuple[list[list[Face]], list[str | None]]:
        """Every face of each image, largest first, without stopping; and per image ``None`` when its
        largest face is usable, else why not: undecodable, no face, or more than ``max_faces`` faces."""
        images = _image_list(images)
        found: list[list[Face]] = [[] for _ in images]
        reasons: list[str | None] = [None] * len(images)
        decoded, keep = [], []
        for i, src in enumerate(images):
            try:
                decoded.append(load_rgb(src))
                keep.append(i)
            except ImageDecodeError as e:
                reasons[i] = f"ImageDecodeError: {e}"
        for i, faces in zip(keep, self.detector.detect_many(decoded)):
            found[i] = list(faces)
            if not faces:
                reasons[i] = "NoFaceError: no face found"
            elif max_faces is not None and len(faces) > max_faces:
                reasons[i] = f"TooManyFaces: {len(faces)} faces found (at most {max_faces})"
        return found, reasons

    @overload
    def embed_each(self, images: Sequence[ImageInput], normalize: bool = ..., max_faces: int | None = ...,
                   return_faces: Literal[False] = ...) -> tuple[np.ndarray, list[str | None]]: ...

    @overload
    def embed_each(self, images: Sequence[ImageInput], normalize: bool = ..., max_faces: int | None = ...,
                   *, return_faces: Literal[True]) -> tuple[np.ndarray, list[str | None], list[list[Face]]]: ...

    def embed_each(self, images: Sequence[ImageInput], normalize: bool = True, max_faces: int | None = None,
                   return_faces: bool = False) -> Any:
        """Like :meth:`embed` but never stops: (embeddings of the usable images in order, and per
        input ``None`` or why it was skipped, as :meth:`find_each` says). ``return_faces``: also
        every face found per input (the first one of a usable input is the one embedded)."""
        found, reasons = self.find_each(images, max_faces)
        crops = [faces[0].crop for faces, why in zip(found, reasons) if why is None]
        z = self.embed_crops(crops, normalize) if crops else np.zeros((0, 0), np.float32)
        return (z, reasons, found) if return_faces else (z, reasons)

    # -- decisions ---------------------------------------------------------------------------
    def score(self, a: ImageInput, b: ImageInput) -> float:
        """Cosine similarity of the largest faces of two images."""
        z = self.embed([a, b])
        return float(z[0] @ z[1])

    def verify(self, a: ImageInput, b: ImageInput, threshold: float | None = None) -> VerifyResult:
        """Same person? Uses ``threshold`` or the checkpoint's calibrated one."""
        t = self.threshold if threshold is None else float(threshold)
        if t is None:
            raise ValueError("this checkpoint has no calibrated face threshold: pass threshold=..., or calibrate "
                             "one (calibrate_threshold on validation pairs, then save_threshold, or "
                             "python -m h_model.faces.evaluate_pairs ... --save-threshold)")
        return self.verify_faces(*self.detector.detect_many([a, b]), threshold=t)

    def verify_faces(self, fa: list[Face], fb: list[Face], threshold: float | None = None) -> VerifyResult:
        """:meth:`verify` for faces already found by ``self.detector``: the largest of each list is compared."""
        t = self.threshold if threshold is None else float(threshold)
        if t is None:
            raise ValueError("this checkpoint has no calibrated face threshold: pass threshold=...")
        for i, f in enumerate((fa, fb)):
            if not f:
                raise NoFaceError(f"no face found in image #{i}", index=i)
        z = self.embed_crops([fa[0].crop, fb[0].crop])
        s = float(z[0] @ z[1])
        return VerifyResult(same=s >= t, score=s, threshold=t, far=self.far, faces=(len(fa), len(fb)),
                            boxes=[[round(float(v), 2) for v in fa[0].box], [round(float(v), 2) for v in fb[0].box]],
                            crops=(fa[0].crop, fb[0].crop))


def _image_list(images: Sequence[ImageInput]) -> list[ImageInput]:
    """A list of images; one bare image (a path, bytes, a PIL image) is a caller's mistake."""
    if isinstance(images, (str, Path, bytes, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim < 4):
        raise TypeError("expected a list of images, got a single image: wrap it in a list")
    return list(images)
