"""An SFace ONNX file -> an ordinary h_model face checkpoint (``python -m h_model.faces convert-sface``).

The checkpoint is a Prototypical H-network (cosine head) over the :mod:`h_model.models.sface`
backbone: ``model.safetensors`` + ``config.json`` carrying the preprocessing the graph's scalar
ops did, the five-point alignment SFace was trained on, and a ``"face"`` entry. From then on the
PyTorch module is the model: nothing at inference reads the ONNX file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoint import save_checkpoint
from ..models import create_model
from ..models.sface import read_onnx
from ..preprocess import Preprocess

__all__ = ["convert_sface", "SFACE_CROP", "SFACE_SOURCE"]

SFACE_CROP = 112
SFACE_SOURCE = {"model": "SFace (Zhong et al. 2021, 'SFace: Sigmoid-Constrained Hypersphere Loss for Robust "
                         "Face Recognition'), OpenCV Zoo face_recognition_sface_2021dec",
                "licence": "Apache-2.0", "url": "https://github.com/opencv/opencv_zoo"}


def convert_sface(onnx_path: str | Path, out: str | Path, float16: bool = False, scale: float = 16.0) -> dict[str, Any]:
    """Write the checkpoint for ``onnx_path`` into ``out``; returns its config. ``float16`` stores
    the weights in half precision (they load back into float32 modules); ``scale`` is the cosine
    head's initial inverse temperature (it only matters when the model is fine-tuned)."""
    state, info = read_onnx(onnx_path)
    model = create_model("proto", "sface", {"input_size": SFACE_CROP}, distance="cosine", scale=scale)
    model.backbone.load_state_dict(state)
    if float16:
        model = model.half()
    prep = Preprocess(size=(SFACE_CROP, SFACE_CROP), channels=3, mean=tuple(info["mean"]), std=tuple(info["std"]))
    config = {"preprocess": prep.to_dict(),
              "data": {"name": "faces", "data_root": None, "image_size": SFACE_CROP, "seed": 0, "margin": 0.0,
                       "alignment": "five_point"},
              "face": {"crop_size": SFACE_CROP, "margin": 0.0, "alignment": "five_point", "threshold": None,
                       "far": None},
              "source": {**SFACE_SOURCE, "file": Path(onnx_path).name, "sha256": info["sha256"],
                         "onnx_weights": info["weights"], "opset": info["opset"],
                         "stored_as": "float16" if float16 else "float32"}}
    save_checkpoint(out, model, config)
    return {**config, "model": model.spec}
