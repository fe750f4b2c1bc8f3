"""The run state: where a run stands, saved to and resumed from ``state.pt``; the best checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import atomic_write, save_checkpoint
from ..models import FewShotModel

STATE = "state.pt"


class RunState:
    """Episode, best validation accuracy and training seconds of the run in ``out``, with what it
    needs to continue exactly: the model, optimiser, distillation projection, sampler generator and
    torch's global random state. :meth:`save` writes ``out/state.pt`` atomically, :meth:`resume`
    reads it back, :meth:`keep_if_best` keeps the best model as the run's checkpoint."""

    def __init__(self, out: str | Path, model: FewShotModel, optimizer: torch.optim.Optimizer,
                 generator: torch.Generator, distill: nn.Module | None = None) -> None:
        self.out, self.model, self.optimizer = Path(out), model, optimizer
        self.generator, self.distill = generator, distill
        self.episode, self.best_val, self.elapsed = 0, -1.0, 0.0

    @property
    def path(self) -> Path:
        return self.out / STATE

    def save(self) -> None:
        st = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "episode": self.episode,
              **({"distill": self.distill.state_dict()} if self.distill is not None else {}),
              "best_val": self.best_val, "elapsed": self.elapsed, "sampler_rng": self.generator.get_state(),
              "torch_rng": torch.get_rng_state()}
        atomic_write(self.path, lambda tmp: torch.save(st, tmp))

    def resume(self) -> bool:
        """Load ``out/state.pt`` into the run; False (nothing changed) when there is none."""
        if not self.path.exists():
            return False
        st = torch.load(self.path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(st["model"])
        if self.distill is not None and "distill" in st:
            self.distill.load_state_dict(st["distill"])
        self.optimizer.load_state_dict(st["optimizer"])
        self.generator.set_state(st["sampler_rng"])
        torch.set_rng_state(st["torch_rng"])
        self.episode, self.best_val, self.elapsed = int(st["episode"]), float(st["best_val"]), float(st["elapsed"])
        return True

    def keep_if_best(self, accuracy: float, config: dict[str, Any]) -> bool:
        """Save the model as the run's checkpoint (``config`` + this accuracy and episode) when
        ``accuracy`` beats the best so far; True when it did."""
        if not accuracy > self.best_val:  # (NaN never counts as better)
            return False
        self.best_val = accuracy
        save_checkpoint(self.out, self.model, {**config, "val_accuracy": accuracy, "episode": self.episode})
        return True
