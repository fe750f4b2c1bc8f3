"""Face detection (YuNet or MTCNN) and aligned face crops.

Two detectors (:data:`DETECTORS`), named in a face checkpoint's ``"face"`` entry like the alignment:
``"yunet"`` (OpenCV Zoo's YuNet, run by OpenCV's ``FaceDetectorYN``; the ONNX file ships with
h_model in ``h_model/bundled/yunet``, MIT licence) and ``"mtcnn"`` (facenet-pytorch's MTCNN, weights
in its wheel; the default for checkpoints that name none). Both give a box and the same 5 landmarks.
A YuNet detector hands photos it finds no face in to MTCNN (``fallback``), so it never finds fewer.
With ``fuse_landmarks`` a YuNet face's 5 landmarks are averaged with MTCNN's for the same face
(:func:`fuse_landmarks`): the two detectors' landmark errors are partly independent, so the mean
places the five-point crop better than either alone. ``fuse_min_face`` makes that MTCNN pass cheap:
it then looks only for faces at least that fraction of YuNet's smallest face.

Two named alignments (:data:`ALIGNMENTS`), stored in a face checkpoint's ``"face"`` entry so
training crops, verification, the gallery and the app all crop the same way:

- ``"eyes"``: rotate about the box centre until the eyes are level, and scale the face box plus a
  ``margin`` on each side to the crop (the students trained in this project);
- ``"five_point"``: the least-squares similarity transform of the 5 landmarks onto the standard
  112x112 five-point template (:data:`FIVE_POINT_TEMPLATE`, scaled to the crop size), as the
  ArcFace / SFace family of models was trained; ``margin`` plays no part.

Every image goes through :mod:`h_model.preprocess` (``_to_pil`` + ``_to_mode``): the same
decoding as training and prediction, with EXIF orientation, any PIL mode (grayscale, RGBA,
palette, 16-bit), the decompression-bomb guard, and :class:`ImageDecodeError` for anything that
is not a readable image. Detection runs on a copy downscaled to ``max_side``; boxes and
landmarks are mapped back to the original image, and crops are cut from the full resolution.
"""
from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from .preprocess import ImageDecodeError, ImageInput, _to_mode, _to_pil

__all__ = ["DETECTORS", "YUNET_FILE", "Face", "FaceDetector", "NoFaceError", "ImageDecodeError", "load_rgb", "image_sha256",
           "alignment_matrix", "align_face", "center_crop", "similarity_transform", "five_point_matrix",
           "ALIGNMENTS", "FIVE_POINT_TEMPLATE", "fuse_landmarks", "box_iou"]

ALIGNMENTS = ("eyes", "five_point")
DETECTORS = ("mtcnn", "yunet")
#: The bundled YuNet detector (OpenCV Zoo ``face_detection_yunet_2023mar_int8bq.onnx``).
YUNET_FILE = Path(__file__).resolve().parent / "bundled" / "yunet" / "face_detection_yunet_2023mar_int8bq.onnx"
#: Left eye, right eye, nose tip, left and right mouth corner (x, y) in a 112x112 crop, "left" being
#: the image's left (the 5-point layout MTCNN gives); the template of the ArcFace / SFace crops.
FIVE_POINT_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


#: One image's detections: boxes ``[n, 4]``, scores ``[n]``, landmarks ``[n, 5, 2]``.
Found = tuple[np.ndarray, np.ndarray, np.ndarray]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of ``a`` ``[n, 4]`` with every box of ``b`` ``[m, 4]`` (x1, y1, x2, y2)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def fuse_landmarks(found: Found, other: Found | None, min_iou: float = 0.3) -> Found:
    """``found``'s faces, each with its landmarks averaged with those of the face of ``other`` whose
    box overlaps it most, where that overlap (IoU) is at least ``min_iou``; boxes and scores stay
    ``found``'s, and a face no face of ``other`` overlaps keeps its own landmarks."""
    if other is None or len(other[0]) == 0 or len(found[0]) == 0:
        return found
    boxes, scores, lm = found
    iou = box_iou(boxes, other[0])
    best = iou.argmax(1)
    hit = iou[np.arange(len(best)), best] >= min_iou
    fused = lm.copy()
    fused[hit] = (lm[hit] + other[2][best[hit]]) / 2
    return boxes, scores, fused


class NoFaceError(ValueError):
    """No face was found in an image (``index`` is its position in a batch, when known)."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


@dataclass
class Face:
    """One detected face: ``box`` (x1, y1, x2, y2) and ``landmarks`` (left eye, right eye, nose,
    mouth left, mouth right; ``[5, 2]`` as x, y) in the original image's pixels, the detector's score ``prob``,
    and the aligned RGB ``crop``."""

    box: np.ndarray
    prob: float
    landmarks: np.ndarray
    crop: Image.Image

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0))


def load_rgb(src: ImageInput) -> Image.Image:
    """Decode any supported input to an RGB PIL image exactly as :func:`h_model.preprocess.load_image` does."""
    return _to_mode(_to_pil(src), 3)


def image_sha256(src: ImageInput) -> str:
    """SHA-256 of a file's or bytes' content; of the decoded RGB pixels for in-memory images."""
    if isinstance(src, bytes):
        return hashlib.sha256(src).hexdigest()
    if isinstance(src, (str, Path)):
        try:
            return hashlib.sha256(Path(src).read_bytes()).hexdigest()
        except OSError as e:
            raise ImageDecodeError(f"cannot read image file {src}: {e}") from e
    img = load_rgb(src)
    h = hashlib.sha256(f"{img.size[0]}x{img.size[1]}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def alignment_matrix(box: np.ndarray, landmarks: np.ndarray, size: int, margin: float) -> np.ndarray:
    """2x3 similarity transform: rotate about the box centre so the eyes are level, scale the
    square box side ``max(w, h) * (1 + 2 * margin)`` to ``size`` pixels, centre it in the crop."""
    (lx, ly), (rx, ry) = landmarks[0], landmarks[1]
    angle = math.degrees(math.atan2(ry - ly, rx - lx))
    cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    side = max(box[2] - box[0], box[3] - box[1], 1.0) * (1.0 + 2.0 * margin)
    m = cv2.getRotationMatrix2D((float(cx), float(cy)), angle, size / float(side))
    m[:, 2] += (size / 2.0 - cx, size / 2.0 - cy)
    return m


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 matrix of the rotation + uniform scale + shift that maps points ``src`` ``[n, 2]`` onto
    ``dst`` with the least squared error (Umeyama 1991, reflections excluded)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two matching [n >= 2, 2] point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var = (s ** 2).sum() / len(src)
    if var <= 0:
        raise ValueError("the source points all coincide")
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    e = np.diag([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
    rot = u @ e @ vt
    scale = float((sig * np.diag(e)).sum() / var)
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def five_point_matrix(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """2x3 similarity transform of the 5 landmarks onto :data:`FIVE_POINT_TEMPLATE` scaled to ``size``."""
    lm = np.asarray(landmarks, np.float64).reshape(-1, 2)
    if lm.shape != (5, 2):
        raise ValueError(f"five-point alignment needs 5 landmarks, got {lm.shape[0]}")
    return similarity_transform(lm, FIVE_POINT_TEMPLATE * (size / 112.0))


def align_face(img: Image.Image, box: np.ndarray, landmarks: np.ndarray, size: int = 160,
               margin: float = 0.2, alignment: str = "eyes") -> Image.Image:
    """The aligned ``size`` x ``size`` RGB crop of one face, by the named ``alignment``
    (``"eyes"``: borders replicate the edge; ``"five_point"``: black borders, as the template models saw)."""
    if alignment == "five_point":
        m = five_point_matrix(landmarks, size)
        flags, border = cv2.INTER_LINEAR, cv2.BORDER_CONSTANT
    elif alignment == "eyes":
        m = alignment_matrix(box, landmarks, size, margin)
        shrink = size / max(box[2] - box[0], box[3] - box[1], 1.0) < 1.0
        flags, border = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR, cv2.BORDER_REPLICATE
    else:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    out = cv2.warpAffine(np.asarray(img), m, (size, size), flags=flags, borderMode=border)
    return Image.fromarray(out)


def center_crop(img: Image.Image, size: int = 160) -> Image.Image:
    """The central square of a whole image resized to ``size`` (fallback for pre-cropped faces)."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s)).resize((size, size), Image.BILINEAR)


class FaceDetector:
    """Every face of an image, largest first, by YuNet or MTCNN (:data:`DETECTORS`).

    ``crop_size``/``margin``: aligned crop side in pixels and extra context as a fraction of the
    face box on each side; ``alignment``: one of :data:`ALIGNMENTS` (``margin`` only shapes
    ``"eyes"``). ``max_side``: larger images are downscaled for detection only (faces
    under ``min_face_size`` pixels *after* that downscale are missed: raise it for group photos).
    ``pad_retry``: when nothing is found, detect once more on the image padded by this fraction
    of its longer side (tightly cropped faces, e.g. Extended Yale B, are found that way); 0 turns
    it off. ``min_prob``: drop detections below this probability (MTCNN's or YuNet's score).

    ``detector="yunet"``: YuNet (``yunet_model``, default the bundled :data:`YUNET_FILE`;
    ``yunet_score`` is its confidence threshold); with ``fallback`` the photos it finds no face in
    (after the padded retry) go to MTCNN, loaded on first use, and so, when ``yunet_sure`` is set,
    do the photos in which it finds any face it scores under ``yunet_sure`` (where MTCNN finds
    nothing, YuNet's faces stay). YuNet's unsure detections are where it errs: a hand taken for a
    face, landmarks scattered by hard light. Passing ``yunet_model`` alone
    selects YuNet. ``fuse_landmarks`` (YuNet only): every face YuNet keeps gets the mean of its
    landmarks and MTCNN's for the same face (:func:`fuse_landmarks`; MTCNN runs on every photo, about
    60 ms more per 640x480 photo on 2 threads). ``fuse_min_face`` (> 0): that MTCNN pass looks only for
    faces whose side is at least this fraction of the shortest box side among the photo's YuNet faces
    (and at least ``min_face_size``), so its image pyramid starts small (0.7: about 20 ms); 0 searches
    the whole pyramid. ``thresholds`` and ``min_face_size`` shape MTCNN.
    """

    def __init__(self, crop_size: int = 160, margin: float = 0.2, min_face_size: int = 20,
                 thresholds: Sequence[float] = (0.6, 0.7, 0.7), max_side: int = 1280, pad_retry: float = 0.25,
                 min_prob: float = 0.0, alignment: str = "eyes", detector: str | None = None,
                 yunet_model: str | Path | None = None, yunet_score: float = 0.6, fallback: bool = True,
                 yunet_sure: float | None = None, fuse_landmarks: bool = False, fuse_min_face: float = 0.0,
                 device: str | torch.device = "cpu") -> None:
        if crop_size < 8 or margin < 0 or max_side < 32:
            raise ValueError("need crop_size >= 8, margin >= 0 and max_side >= 32")
        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
        detector = detector or ("yunet" if yunet_model is not None else "mtcnn")
        if detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
        if detector == "mtcnn" and yunet_model is not None:
            raise ValueError("yunet_model is given but detector='mtcnn'")
        if yunet_sure is not None and not (math.isfinite(yunet_sure) and 0 <= yunet_sure <= 1):
            raise ValueError(f"yunet_sure must be a score in [0, 1] or None, got {yunet_sure}")
        if fuse_landmarks and detector != "yunet":
            raise ValueError("fuse_landmarks averages YuNet's landmarks with MTCNN's: it needs detector='yunet'")
        if not (math.isfinite(fuse_min_face) and 0 <= fuse_min_face <= 1):
            raise ValueError(f"fuse_min_face must be a fraction in [0, 1], got {fuse_min_face}")
        if fuse_min_face and not fuse_landmarks:
            raise ValueError("fuse_min_face shapes the fuse_landmarks pass: set fuse_landmarks=True too")
        self.alignment, self.detector = alignment, detector
        self.crop_size, self.margin, self.max_side = int(crop_size), float(margin), int(max_side)
        self.pad_retry, self.min_prob, self.min_face_size = float(pad_retry), float(min_prob), int(min_face_size)
        self.fallback = bool(fallback) and detector == "yunet"
        self.yunet_sure = None if yunet_sure is None else float(yunet_sure)
        self.fuse_landmarks, self.fuse_min_face = bool(fuse_landmarks), float(fuse_min_face)
        self._thresholds, self._device = list(thresholds), torch.device(device)
        self._mtcnn: Any = None
        self.yunet: Any = None
        self._yunet_lock = threading.Lock()  # one OpenCV detector: its input size and run are one step
        if detector == "yunet":
            path = Path(yunet_model) if yunet_model is not None else YUNET_FILE
            if not path.is_file():
                raise FileNotFoundError(f"no YuNet model at {path} (face_detection_yunet_*.onnx from OpenCV Zoo"
                                        + ("; reinstall h_model, it ships one)" if yunet_model is None else ")"))
            self.yunet = cv2.FaceDetectorYN.create(str(path), "", (320, 320), float(yunet_score), 0.3, 5000)
        else:
            self._mtcnn = self._make_mtcnn()

    def _make_mtcnn(self) -> Any:
        from facenet_pytorch import MTCNN

        m = MTCNN(keep_all=True, min_face_size=self.min_face_size, thresholds=self._thresholds, device=self._device)
        for net in (m.pnet, m.rnet, m.onet):  # channels-last maps: the CPU max-pools them several times faster
            net.to(memory_format=torch.channels_last)
        return m

    @property
    def mtcnn(self) -> Any:
        """The MTCNN detector (the YuNet detector's fallback: created on first use)."""
        if self._mtcnn is None:
            self._mtcnn = self._make_mtcnn()
        return self._mtcnn

    @property
    def settings(self) -> dict[str, Any]:
        """What shapes the crops. ``alignment`` is named only when it is not ``"eyes"``, and
        ``yunet_sure`` only when set, so models and galleries made before they existed keep their
        fingerprints."""
        out: dict[str, Any] = {"crop_size": self.crop_size, "margin": self.margin}
        if self.alignment != "eyes":
            out["alignment"] = self.alignment
        if self.yunet is not None:
            out["detector"] = "yunet"
            if self.yunet_sure is not None:
                out["yunet_sure"] = self.yunet_sure
            if self.fuse_landmarks:
                out["fuse_landmarks"] = True
                if self.fuse_min_face:
                    out["fuse_min_face"] = self.fuse_min_face
        return out

    def detect(self, image: ImageInput) -> list[Face]:
        """All faces in one image, largest first; :class:`NoFaceError` when there is none."""
        faces = self.detect_many([image])[0]
        if not faces:
            raise NoFaceError("no face found in the image")
        return faces

    def largest(self, images: Sequence[ImageInput]) -> list[Face]:
        """The largest face of each image; :class:`NoFaceError` (with ``index``) for one without."""
        out = []
        for i, faces in enumerate(self.detect_many(images)):
            if not faces:
                raise NoFaceError(f"no face found in image #{i}", index=i)
            out.append(faces[0])
        return out

    def detect_many(self, images: Sequence[ImageInput]) -> list[list[Face]]:
        """Faces of several images (an empty list where none): images of one size share a batch."""
        if not isinstance(images, (list, tuple)):
            raise TypeError("detect_many expects a list of images")
        rgb = []
        for i, src in enumerate(images):
            try:
                rgb.append(load_rgb(src))
            except ImageDecodeError as e:
                raise ImageDecodeError(f"image #{i}: {e}") from e
        small, scales = zip(*(self._downscale(im) for im in rgb)) if rgb else ((), ())
        found = self._find(list(small), self.detector)
        by_yunet = [self.yunet is not None and f is not None for f in found]
        if self.fallback and self.yunet is not None and self.yunet_sure is not None:
            unsure = [i for i, f in enumerate(found) if f is not None and float(f[1].min()) < self.yunet_sure]
            for i, res in zip(unsure, self._find([small[i] for i in unsure], "mtcnn")):
                if res is not None:
                    found[i], by_yunet[i] = res, False
        if self.fallback:
            missing = [i for i, f in enumerate(found) if f is None]
            for i, res in zip(missing, self._find([small[i] for i in missing], "mtcnn")):
                found[i] = res
        if self.fuse_landmarks:
            mine = [i for i, y in enumerate(by_yunet) if y]
            sizes = [self._fuse_size(found[i]) for i in mine]
            for i, res in zip(mine, self._find([small[i] for i in mine], "mtcnn", sizes)):
                found[i] = fuse_landmarks(found[i], res)
        return [self._faces(rgb[i], found[i], scales[i]) for i in range(len(rgb))]

    # -- internals ---------------------------------------------------------------------------
    def _downscale(self, img: Image.Image) -> tuple[Image.Image, float]:
        f = self.max_side / max(img.size)
        if f >= 1.0:
            return img, 1.0
        size = (max(1, round(img.size[0] * f)), max(1, round(img.size[1] * f)))
        return img.resize(size, Image.BILINEAR), f

    def _fuse_size(self, found: Found | None) -> int:
        """MTCNN's smallest face for the fusion pass over a photo with YuNet's ``found``."""
        if not self.fuse_min_face or found is None:
            return self.min_face_size
        side = float(np.minimum(found[0][:, 2] - found[0][:, 0], found[0][:, 3] - found[0][:, 1]).min())
        return max(self.min_face_size, int(self.fuse_min_face * side))

    def _find(self, imgs: list[Image.Image], engine: str, min_faces: list[int] | None = None) -> list[Found | None]:
        """``engine``'s detections of each image, and on the padded image where there were none
        (``min_faces``: MTCNN's smallest face per image, default ``min_face_size``)."""
        found = self._yunet_each(imgs) if engine == "yunet" else self._mtcnn_grouped(imgs, min_faces)
        if self.pad_retry > 0:
            missing = [i for i, f in enumerate(found) if f is None]
            sizes = None if min_faces is None else [min_faces[i] for i in missing]
            for i, res in zip(missing, self._detect_padded([imgs[i] for i in missing], engine, sizes)):
                found[i] = res
        return found

    def _yunet_each(self, imgs: list[Image.Image]) -> list[Found | None]:
        return [self._yunet(im) if min(im.size) >= 12 else None for im in imgs]

    def _mtcnn_grouped(self, imgs: list[Image.Image], min_faces: list[int] | None = None) -> list[Found | None]:
        """MTCNN over groups of one size and smallest face (``min_faces``, default ``min_face_size``);
        per image (boxes, probs, landmarks) or None."""
        from facenet_pytorch.models.utils.detect_face import detect_face

        out: list[Found | None] = [None] * len(imgs)
        groups: dict[tuple[tuple[int, int], int], list[int]] = {}
        for i, im in enumerate(imgs):
            smallest = self.min_face_size if min_faces is None else min_faces[i]
            if min(im.size) >= max(smallest, 12):  # smaller: MTCNN's pyramid is empty
                groups.setdefault((im.size, smallest), []).append(i)
        for (_, smallest), idx in groups.items():
            m = self.mtcnn  # loaded on first use: a YuNet detector may never need it
            # [N, H, W, 3] viewed over a standard-layout [N, 3, H, W] batch: detect_face permutes it back,
            # so its pyramid is resampled in the layout the CPU resamples fastest
            batch = torch.from_numpy(np.stack([np.asarray(imgs[i], np.uint8) for i in idx]))
            batch = batch.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
            with torch.no_grad():  # MTCNN.detect's own call, with this group's smallest face
                boxes, points = detect_face(batch, smallest, m.pnet, m.rnet, m.onet, m.thresholds, m.factor, m.device)
            for j, i in enumerate(idx):
                if len(boxes[j]) == 0:
                    continue
                found = np.asarray(boxes[j], dtype=np.float32).reshape(-1, 5)
                b, p = found[:, :4], found[:, 4]
                lm = np.asarray(points[j], dtype=np.float32).reshape(-1, 5, 2)
                keep = p >= self.min_prob
                if keep.any():
                    out[i] = (b[keep], p[keep], lm[keep])
        return out

    def _yunet(self, img: Image.Image) -> Found | None:
        """YuNet's (boxes, scores, landmarks) of one RGB image, or None."""
        bgr = np.ascontiguousarray(np.asarray(img)[:, :, ::-1])
        with self._yunet_lock:  # threads (the app's concurrent requests) share the detector
            self.yunet.setInputSize((bgr.shape[1], bgr.shape[0]))
            _, found = self.yunet.detect(bgr)
        if found is None or len(found) == 0:
            return None
        found = np.asarray(found, np.float32)
        keep = found[:, 14] >= self.min_prob
        if not keep.any():
            return None
        f = found[keep]
        boxes = np.stack([f[:, 0], f[:, 1], f[:, 0] + f[:, 2], f[:, 1] + f[:, 3]], 1)
        return boxes, f[:, 14], f[:, 4:14].reshape(-1, 5, 2)

    def _detect_padded(self, imgs: list[Image.Image], engine: str,
                       min_faces: list[int] | None = None) -> list[Found | None]:
        padded, pads = [], []
        for im in imgs:
            pad = int(round(self.pad_retry * max(im.size)))
            a = cv2.copyMakeBorder(np.asarray(im), pad, pad, pad, pad, cv2.BORDER_REPLICATE)
            padded.append(Image.fromarray(a))
            pads.append(pad)
        res = self._yunet_each(padded) if engine == "yunet" else self._mtcnn_grouped(padded, min_faces)
        out: list[Found | None] = []
        for r, pad in zip(res, pads):
            out.append(None if r is None else (r[0] - pad, r[1], r[2] - pad))
        return out

    def _faces(self, img: Image.Image, found: Found | None,
               scale: float) -> list[Face]:
        if found is None:
            return []
        boxes, probs, points = found
        boxes, points = boxes / scale, points / scale
        faces = [Face(box=b, prob=float(p), landmarks=lm,
                      crop=align_face(img, b, lm, self.crop_size, self.margin, self.alignment))
                 for b, p, lm in zip(boxes, probs, points)]
        return sorted(faces, key=lambda f: -f.area)
