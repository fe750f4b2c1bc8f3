"""Checkpoints small enough to ship inside the package, so the demo and the verifier work offline.

``bundled_path("omniglot")`` is the Prototypical ResNet-12 trained on Omniglot at 56x56;
``bundled_path("faces")`` is the default face model. Each folder is an ordinary checkpoint (``model.safetensors`` +
``config.json``, with the training run's ``results.json`` beside them).
"""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
BUNDLED = {"omniglot": HERE / "omniglot_proto_resnet12", "faces": HERE / "faces_default"}


def bundled_path(name: str) -> Path:
    """The folder of bundled checkpoint ``name`` (FileNotFoundError naming the choices when absent)."""
    if name not in BUNDLED:
        raise KeyError(f"no bundled model {name!r}; choose from {sorted(BUNDLED)}")
    path = BUNDLED[name]
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"the bundled {name} model is missing from this install ({path}); "
                                "reinstall h_model or pass a checkpoint path")
    return path
