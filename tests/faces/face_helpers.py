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
