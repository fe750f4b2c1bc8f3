"""Ensembles of trained checkpoints: their backbones side by side in one model and one checkpoint.

    python training/ensemble_models.py runs/faces_a runs/faces_b --out runs/faces_ab [--mode mean] [--half]

The ensemble's backbone is :class:`h_model.models.backbones.EnsembleBackbone` (the members'
L2-normalised embeddings concatenated, so that a cosine between two ensemble embeddings is the
mean of the members' cosines, or averaged, for members that embed into one space), its head is the members' head (which must have no parameters beyond
scalars such as a learned scale: those are averaged). The members must share the variant, head
settings and preprocessing; the checkpoint rebuilds with ``h_model.load`` like any other.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from .checkpoint import load_checkpoint, save_checkpoint, write_json
from .models import create_model
from .models.base import FewShotModel

__all__ = ["ensemble_models", "ensemble_checkpoints"]


def _head_kwargs(model: FewShotModel) -> dict[str, Any]:
    return {k: v for k, v in model.spec["model_kwargs"].items() if k not in ("scale", "dim")}


def ensemble_models(models: Sequence[FewShotModel], mode: str = "concat",
                    weights: Sequence[float] | None = None) -> FewShotModel:
    """One model whose backbone holds every member's trained backbone (weights copied); ``weights``:
    each member's share of the ensemble's cosine (default equal)."""
    if len(models) < 2:
        raise ValueError("an ensemble needs at least two models")
    first = models[0]
    for i, m in enumerate(models[1:], 1):
        if m.spec["variant"] != first.spec["variant"] or _head_kwargs(m) != _head_kwargs(first):
            raise ValueError(f"member {i} is {m.spec['variant']} {_head_kwargs(m)}, member 0 is "
                             f"{first.spec['variant']} {_head_kwargs(first)}: ensembles need one head")
    members = [{"backbone": m.spec["backbone"], "kwargs": m.spec["backbone_kwargs"]} for m in models]
    kwargs: dict[str, Any] = {"members": members, "mode": mode}
    if weights is not None:
        kwargs["weights"] = [float(w) for w in weights]
    ens = create_model(first.spec["variant"], "ensemble", kwargs, **first.spec["model_kwargs"])
    for target, m in zip(ens.backbone.members, models):
        target.load_state_dict(m.backbone.state_dict())
    head = {k: v for k, v in ens.state_dict().items() if not k.startswith("backbone.")}
    for k in head:
        values = [m.state_dict()[k] for m in models]
        if any(v.dim() > 0 for v in values):
            raise ValueError(f"the head parameter {k!r} is not a scalar: only heads without learned layers "
                             "(prototypical, matching without FCE) can be ensembled")
        head[k] = torch.stack([v.float() for v in values]).mean().to(values[0].dtype)
    ens.load_state_dict(head, strict=False)
    return ens.eval()


def ensemble_checkpoints(paths: Sequence[str | Path], out: str | Path, half: bool = False,
                         mode: str = "concat", weights: Sequence[float] | None = None) -> Path:
    """Write the ensemble of the checkpoints at ``paths`` to the run directory ``out``.

    Its config is the first member's (data, preprocessing, training) with the model replaced and
    an ``"ensemble"`` entry naming every member; a face threshold is dropped, as it belongs to one
    member's embedding (recalibrate, e.g. with ``training/bundle_face_model.py``). ``half`` stores
    the weights as float16 (half the file; the model still computes in float32). ``mode``:
    ``"concat"`` or ``"mean"``, ``weights`` one per member
    (:class:`~h_model.models.backbones.EnsembleBackbone`).
    """
    loaded = [load_checkpoint(p, "cpu") for p in paths]
    configs = [c for _, c in loaded]
    for i, c in enumerate(configs[1:], 1):
        for key in ("preprocess",):
            if c.get(key) != configs[0].get(key):
                raise ValueError(f"member {i} ({paths[i]}) has another {key} than member 0: {c.get(key)} vs "
                                 f"{configs[0].get(key)}")
        face0, face = configs[0].get("face") or {}, c.get("face") or {}
        for key in ("crop_size", "margin"):
            if face.get(key) != face0.get(key):
                raise ValueError(f"member {i} ({paths[i]}) was aligned with {key}={face.get(key)}, member 0 "
                                 f"with {face0.get(key)}")
    ens = ensemble_models([m for m, _ in loaded], mode, weights)
    if half:
        ens = ens.half()
    config = {k: v for k, v in configs[0].items() if k not in ("format", "model", "val_accuracy", "episode")}
    if "face" in config:
        config["face"] = {k: v for k, v in config["face"].items() if k in ("crop_size", "margin")}
    config["ensemble"] = {"mode": mode, "member_weights": list(ens.backbone.weights), "weights_dtype": "float16" if half else "float32", "members": [
        {"path": str(p), "model": c.get("model"), "source": c.get("source"), "train": c.get("train"),
         "val_accuracy": c.get("val_accuracy"), "episode": c.get("episode")} for p, c in zip(paths, configs)]}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = save_checkpoint(out, ens, config)
    results = {"ensemble_of": [str(p) for p in paths]}
    for i, p in enumerate(paths):
        r = Path(p) / "results.json" if Path(p).is_dir() else Path(p).parent / "results.json"
        if r.is_file():
            results[f"member{i}"] = json.loads(r.read_text())
    write_json(out / "results.json", results)
    return weights
