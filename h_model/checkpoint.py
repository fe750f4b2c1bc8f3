"""Checkpoints: ``model.safetensors`` + ``config.json`` in a run directory, written atomically.

The config carries everything needed to rebuild the model (variant, backbone, their keyword
arguments) and to feed it (the :class:`~h_model.preprocess.Preprocess`), so ``h_model.load``
needs nothing but the path.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from .models import FewShotModel, create_model

FORMAT = "h_model/1"
WEIGHTS, CONFIG = "model.safetensors", "config.json"


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any, indent: int = 2) -> None:
    """``obj`` as indented JSON (and a final newline), written atomically; makes the folder."""
    def w(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent)
            f.write("\n")
    atomic_write(Path(path), w)


def save_checkpoint(run_dir: str | Path, model: FewShotModel, config: dict[str, Any],
                    weights_name: str = WEIGHTS) -> Path:
    """Save weights (safetensors) and config (JSON) into ``run_dir``; returns the weights path.

    ``config`` needs a ``preprocess`` entry; the model's own ``spec`` (from ``create_model``)
    is stored under ``model``.
    """
    run_dir = Path(run_dir)
    config = {**config, "model": model.spec}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(run_dir / weights_name, lambda tmp: save_file(state, tmp, metadata={"format": FORMAT}))
    write_json(run_dir / CONFIG, {"format": FORMAT, **config})
    return run_dir / weights_name


def store_float16(weights: str | Path) -> None:
    """Rewrite a weights file with its floating-point tensors in half precision (half the size;
    they load back into float32 modules)."""
    weights = Path(weights)
    state = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
    atomic_write(weights, lambda tmp: save_file(state, tmp, metadata={"format": FORMAT}))


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(weights file, config file) from a run directory or a weights file."""
    path = Path(path).expanduser()
    weights = path / WEIGHTS if path.is_dir() else path
    config = weights.parent / CONFIG
    if not weights.is_file():
        raise FileNotFoundError(f"no checkpoint weights at {weights}")
    if not config.is_file():
        raise FileNotFoundError(f"checkpoint {weights} has no {CONFIG} beside it")
    return weights, config


def build_model(config: dict[str, Any]) -> FewShotModel:
    m = config["model"]
    return create_model(m["variant"], m["backbone"], m.get("backbone_kwargs") or {}, **(m.get("model_kwargs") or {}))


def read_config(path: str | Path) -> dict[str, Any]:
    """The config of the checkpoint at ``path`` (run directory or weights file), weights unread."""
    _, cfg_path = resolve_checkpoint(path)
    config = json.loads(cfg_path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{cfg_path} is not an h_model checkpoint config (format {config.get('format')!r})")
    return config


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[FewShotModel, dict[str, Any]]:
    """Rebuild the model from its config and load its weights (safetensors: no code execution)."""
    weights, _ = resolve_checkpoint(path)
    config = read_config(path)
    model = build_model(config)
    model.load_state_dict(load_file(str(weights), device="cpu"))
    return model.to(device).eval(), config
