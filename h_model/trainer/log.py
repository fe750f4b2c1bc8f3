"""The run log: ``metrics.csv`` (the curves), TensorBoard scalars, running means between rows."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write

METRIC_FIELDS = ["episode", "loss", "train_acc", "val_acc", "val_ci95", "lr", "elapsed_s", "distill_loss"]
TB_FIELDS = ("loss", "train_acc", "val_acc", "lr")


def read_metrics(path: Path, upto: int) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path) as f:
        return [r for r in csv.DictReader(f) if int(r["episode"]) <= upto]


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    def w(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            wr = csv.DictWriter(f, METRIC_FIELDS)
            wr.writeheader()
            wr.writerows(rows)
    atomic_write(path, w)


def tensorboard_writer(out: Path):
    """A TensorBoard writer in ``out/tb`` when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tb"))


class RunLog:
    """Rows of ``metrics.csv``: each holds the training loss / accuracy (and distillation loss)
    averaged over the steps since the previous row, and the validation figures when it has them.

    ``rows`` continues a resumed run's log; ``tensorboard`` also writes the scalars to ``out/tb``.
    """

    def __init__(self, path: Path, rows: list[dict[str, Any]] | None = None, distill: bool = False,
                 tensorboard: bool = False) -> None:
        self.path, self.rows, self.distill = Path(path), list(rows or []), distill
        self.tb = tensorboard_writer(self.path.parent) if tensorboard else None
        self._reset()

    def _reset(self) -> None:
        self.loss = self.acc = self.distill_loss = 0.0
        self.steps = 0

    def add_step(self, loss: float, acc: float, distill_loss: float | None = None) -> None:
        self.loss += loss
        self.acc += acc
        self.distill_loss += 0.0 if distill_loss is None else distill_loss
        self.steps += 1

    def train_row(self, episode: int, lr: float, elapsed_s: float) -> dict[str, Any]:
        """A row of the means since the last one (validation left empty); starts the next means."""
        n = self.steps
        row = {"episode": episode, "loss": round(self.loss / n, 5), "train_acc": round(self.acc / n, 5),
               "val_acc": "", "val_ci95": "", "lr": lr, "elapsed_s": round(elapsed_s, 2),
               "distill_loss": round(self.distill_loss / n, 5) if self.distill else ""}
        self._reset()
        return row

    def append(self, row: dict[str, Any], tensorboard: bool = True) -> None:
        self.rows.append(row)
        if self.tb is not None and tensorboard:
            for k in TB_FIELDS:
                if row.get(k, "") != "":
                    self.tb.add_scalar(k, float(row[k]), row["episode"])

    def last_validated(self) -> int | None:
        """The episode of the last row with a validation accuracy (None when there is none)."""
        validated = [r for r in self.rows if r["val_acc"] != ""]
        return int(validated[-1]["episode"]) if validated else None

    def write(self) -> None:
        write_metrics(self.path, self.rows)
