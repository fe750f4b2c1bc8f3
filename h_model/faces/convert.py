"""Published face models -> ordinary h_model face checkpoints (``python -m h_model.faces convert-sface``
and ``convert-dlib``).

The checkpoint is a Prototypical H-network (cosine head) over the :mod:`h_model.models.sface` or
:mod:`h_model.models.dlib_resnet` backbone: ``model.safetensors`` + ``config.json`` carrying the
preprocessing the model expects, the crop it was trained on, a ``"face"`` entry and the source
and licence of the weights. From then on the PyTorch module is the model: nothing at inference
reads the ONNX or dlib file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoint import save_checkpoint
from ..models import create_model
from ..models.dlib_resnet import CHIP, DLIB_INPUT_NORM, dlib_state
from ..models.sface import read_onnx
from ..preprocess import Preprocess

__all__ = ["convert_sface", "convert_dlib", "write_face_checkpoint", "SFACE_CROP", "SFACE_SOURCE", "DLIB_SOURCE"]

SFACE_CROP = 112
SFACE_SOURCE = {"model": "SFace (Zhong et al. 2021, 'SFace: Sigmoid-Constrained Hypersphere Loss for Robust "
                         "Face Recognition'), OpenCV Zoo face_recognition_sface_2021dec",
                "licence": "Apache-2.0", "url": "https://github.com/opencv/opencv_zoo"}
DLIB_SOURCE = {"model": "dlib's face recognition ResNet (dlib_face_recognition_resnet_model_v1, Davis E. King), "
                        "as shipped in the face-recognition-models package",
               "licence": "public domain (CC0 1.0, per dlib-models); the face-recognition-models package is MIT",
               "url": "https://github.com/davisking/dlib-models"}
#: dlib's own crop: ``dlib.get_face_chip(image, five_point_shape, 150, 0.25)``.
DLIB_ALIGNMENT = "dlib_chip"


def write_face_checkpoint(out: str | Path, backbone: str, backbone_kwargs: dict[str, Any], state: dict[str, Any],
                          prep: Preprocess, face: dict[str, Any], source: dict[str, Any], float16: bool = False,
                          scale: float = 16.0) -> dict[str, Any]:
    """A Prototypical cosine-head checkpoint over ``backbone`` with ``state`` loaded, its preprocessing,
    ``face`` settings (crop size, margin, alignment) and ``source`` entry; returns its config.
    ``float16`` stores the weights in half precision (they load back into float32 modules);
    ``scale`` is the cosine head's initial inverse temperature (it only matters when fine-tuned)."""
    model = create_model("proto", backbone, backbone_kwargs, distance="cosine", scale=scale)
    model.backbone.load_state_dict(state)
    if float16:
        model = model.half()
    crop = face["crop_size"]
    config = {"preprocess": prep.to_dict(),
              "data": {"name": "faces", "data_root": None, "image_size": crop, "seed": 0, "margin": face["margin"],
                       "alignment": face["alignment"]},
              "face": {**face, "threshold": None, "far": None},
              "source": {**source, "stored_as": "float16" if float16 else "float32"}}
    save_checkpoint(out, model, config)
    return {**config, "model": model.spec}


def convert_sface(onnx_path: str | Path, out: str | Path, float16: bool = False, scale: float = 16.0) -> dict[str, Any]:
    """Write the checkpoint for ``onnx_path`` into ``out``; returns its config (see :func:`write_face_checkpoint`)."""
    state, info = read_onnx(onnx_path)
    prep = Preprocess(size=(SFACE_CROP, SFACE_CROP), channels=3, mean=tuple(info["mean"]), std=tuple(info["std"]))
    face = {"crop_size": SFACE_CROP, "margin": 0.0, "alignment": "five_point"}
    source = {**SFACE_SOURCE, "file": Path(onnx_path).name, "sha256": info["sha256"],
              "onnx_weights": info["weights"], "opset": info["opset"]}
    return write_face_checkpoint(out, "sface", {"input_size": SFACE_CROP}, state, prep, face, source, float16, scale)


def convert_dlib(dat_path: str | Path, out: str | Path, float16: bool = False, scale: float = 16.0) -> dict[str, Any]:
    """Write the checkpoint for dlib's ``.dat`` face model into ``out``; returns its config (see
    :func:`write_face_checkpoint`). The model takes dlib's 150x150 chips (alignment ``"dlib_chip"``:
    dlib's 5-point shape, ``get_face_chip(..., 150, 0.25)``), normalised as dlib does."""
    state, info = dlib_state(dat_path)
    prep = Preprocess(size=(CHIP, CHIP), channels=3, mean=DLIB_INPUT_NORM["mean"], std=DLIB_INPUT_NORM["std"])
    face = {"crop_size": CHIP, "margin": 0.0, "alignment": DLIB_ALIGNMENT}
    source = {**DLIB_SOURCE, "file": Path(dat_path).name, "sha256": info["sha256"],
              "loss": {"margin": info["margin"], "distance_threshold": info["threshold"]}}
    return write_face_checkpoint(out, "dlib_resnet", {"input_size": CHIP}, state, prep, face, source, float16, scale)
