"""TrainConfig: every knob of a training run; YAML configs and command-line flags fill it."""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..evaluate import parse_setting

#: options that were renamed: old name -> new name (old configs and checkpoints keep loading)
RENAMED = {"test_way": "val_way", "test_shot": "val_shot", "test_query": "val_query"}


def renamed_options(d: Mapping[str, Any]) -> dict[str, Any]:
    """``d`` with every old option name replaced by its new one; both spellings at once is an error."""
    both = [old for old, new in RENAMED.items() if old in d and new in d]
    if both:
        raise ValueError("; ".join(f"training option {old} is the old name of {RENAMED[old]}: give one of them, "
                                   f"not both" for old in both))
    return {RENAMED.get(k, k): v for k, v in d.items()}


def _accept_old_names(cls: type) -> type:
    """The dataclass constructor also takes the old option names (``TrainConfig(test_way=5)``)."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **renamed_options(kwargs))

    cls.__init__ = __init__  # type: ignore[misc]
    return cls


@_accept_old_names
@dataclass
class TrainConfig:
    """Every knob of a training run; YAML configs and command-line flags fill it.

    ``val_way`` / ``val_shot`` / ``val_query`` are the validation episodes' setting (formerly
    ``test_way`` / ``test_shot`` / ``test_query``, still accepted); ``eval_settings`` are the final
    test settings.
    """

    variant: str = "proto"
    backbone: str = "conv4"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str = "omniglot"
    data_root: str | None = None
    image_size: int = 28
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    episodes: int = 2000
    train_way: int = 60
    train_shot: int = 5
    train_query: int = 5
    episodes_per_batch: int = 1
    both_ways: bool = False  # also classify the support images by the queries' prototypes (same embeddings)
    val_way: int = 5
    val_shot: int = 1
    val_query: int = 15
    val_every: int = 250
    val_episodes: int = 300
    eval_settings: list[str] = field(default_factory=lambda: ["5w1s", "5w5s", "20w1s", "20w5s"])
    eval_episodes: int = 1000
    eval_query: int = 15
    lr: float = 1e-3
    lr_schedule: str = "step"  # step | cosine | constant
    lr_step: int = 2000
    lr_gamma: float = 0.5
    weight_decay: float = 0.0
    time_limit_min: float | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    out: str = "runs/default"
    resume: bool = False
    checkpoint_every: int = 100
    log_every: int = 10
    augment: bool | dict[str, Any] = False  # True or {flip, brightness, contrast, rotate_deg, scale, shift}
    teacher: str | None = None  # distil this pretrained embedder into the backbone (the caller supplies its targets)
    teacher_kwargs: dict[str, Any] = field(default_factory=dict)
    distill_embed: float = 1.0  # weight of the embedding-matching term
    distill_relation: float = 1.0  # weight of the pairwise-similarity (relational) term
    face_far: float = 1e-3  # face runs: false-accept rate at which the threshold is calibrated
    backbone_lr_scale: float = 1.0  # fine-tuning: the backbone learns at lr * this (the head at lr)
    freeze_bn: bool = False  # fine-tuning: BatchNorm layers keep their running statistics (eval mode)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """From a YAML config or a checkpoint's ``train`` entry (old option names included)."""
        d = renamed_options(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def validate(self) -> None:
        if self.variant == "siamese" and self.train_shot < 1:
            raise ValueError("siamese training needs train_shot >= 1")
        if self.lr_schedule not in ("step", "cosine", "constant"):
            raise ValueError("lr_schedule must be step, cosine or constant")
        if self.backbone_lr_scale < 0:
            raise ValueError(f"backbone_lr_scale must be >= 0, got {self.backbone_lr_scale}")
        for s in self.eval_settings:
            parse_setting(s)
