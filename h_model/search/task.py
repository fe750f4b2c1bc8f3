"""The child task every search scores designs on: brief Prototypical-network training on
few-shot episodes (the project's EpisodeSampler), reward = validation accuracy (its evaluator)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from ..data import ImageSet
from ..data.omniglot import omniglot_splits, split_background
from ..episodes import EpisodeSampler
from ..evaluate import embed_all, evaluate
from ..models import create_model
from ..models.base import MODELS
from .reinforce import LOWEST_REWARD

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


@dataclass
class ChildConfig:
    """How long and on what a child network trains before it is scored."""

    way: int = 5
    shot: int = 1
    query: int = 5
    steps: int = 30            # training episodes per child
    lr: float = 1e-3           # Adam learning rate (when no optimizer factory is given)
    val_way: int = 5
    val_shot: int = 1
    val_query: int = 5
    val_episodes: int = 200
    variant: str = "proto"     # the H-network head over the child backbone (proto, matching, siamese)


class FewShotTask:
    """Trains ``create_model(cfg.variant, backbone)`` for ``steps`` episodes and returns its accuracy.

    Non-finite losses, parameters or embeddings, and numerical errors, give ``LOWEST_REWARD``.
    """

    def __init__(self, train: ImageSet, val: ImageSet, cfg: ChildConfig | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.train, self.val, self.cfg, self.device = train, val, cfg or ChildConfig(), torch.device(device)
        c = self.cfg  # settings the data cannot serve fail here, not as a zero reward per child
        if c.variant not in MODELS:
            raise ValueError(f"unknown H-network variant {c.variant!r}; registered: {', '.join(MODELS.names())}")
        EpisodeSampler(train, c.way, c.shot, c.query)
        EpisodeSampler(val, c.val_way, c.val_shot, c.val_query)

    def score(self, backbone: nn.Module, seed: int = 0, make_optimizer: OptimizerFactory | None = None,
              steps: int | None = None) -> float:
        try:
            return self._score(backbone, seed, make_optimizer, self.cfg.steps if steps is None else steps)
        except (RuntimeError, ValueError, OverflowError, ZeroDivisionError, FloatingPointError):
            return LOWEST_REWARD

    def _score(self, backbone: nn.Module, seed: int, make_optimizer: OptimizerFactory | None, steps: int) -> float:
        c, prep = self.cfg, self.train.preprocess
        torch.manual_seed(seed)
        model = create_model(c.variant, backbone, input_shape=tuple(self.train.images.shape[1:])).to(self.device)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = make_optimizer(params) if make_optimizer else torch.optim.Adam(params, lr=c.lr)
        sampler = EpisodeSampler(self.train, c.way, c.shot, c.query, 1, seed=seed)
        model.train()
        for _ in range(steps):
            ep = sampler.sample().to(self.device, prep)
            loss, _ = model.episode_loss(ep.support_x, ep.support_y, ep.query_x, ep.query_y, ep.way)
            if not math.isfinite(float(loss.detach())):
                return LOWEST_REWARD
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            return LOWEST_REWARD
        z = embed_all(model, self.val, self.device)
        if not torch.isfinite(z).all():
            return LOWEST_REWARD
        res = evaluate(model, self.val, c.val_way, c.val_shot, c.val_query, c.val_episodes, seed=4321,
                       device=self.device, embeddings=z)
        return float(res["accuracy"])


def omniglot_task(data_root: str | Path | None = None, cfg: ChildConfig | None = None, image_size: int = 28,
                  val_classes: int | None = 60, seed: int = 0, device: str | torch.device = "cpu",
                  background: ImageSet | None = None) -> FewShotTask:
    """Omniglot's training split for the children, ``val_classes`` seeded validation classes
    (all, when None) to score them: fewer classes make every reward cheaper to compute.

    ``background``: the decoded background characters (``ImageSet.load`` of a saved file) in
    place of the data folder, for machines that have the images but not the dataset.
    """
    if background is None:
        train, val, _ = omniglot_splits(data_root, image_size=image_size, seed=seed)
    else:
        if tuple(background.images.shape[-2:]) != (image_size, image_size):
            raise ValueError(f"the background images are {tuple(background.images.shape[-2:])}, not {image_size}px")
        train, val = split_background(background, seed=seed)
    if val_classes is not None and val_classes < val.num_classes:
        g = torch.Generator().manual_seed(seed)
        val = val.subset(sorted(torch.randperm(val.num_classes, generator=g)[:val_classes].tolist()))
    return FewShotTask(train, val, cfg, device)


class SmallConvNet(nn.Module):
    """``depth`` x [conv3x3 -> BatchNorm -> activation -> maxpool2] with any activation module.

    The child network of the optimizer and activation searches (Conv-4's layout with a
    pluggable activation; ``activation`` is called once per block so each block owns its own
    trainable parameters, e.g. an activation's beta).
    """

    def __init__(self, activation: Callable[[], nn.Module] = nn.ReLU, in_channels: int = 1, hidden: int = 32,
                 depth: int = 4) -> None:
        super().__init__()
        chans = [in_channels] + [hidden] * depth
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b),
                                                    activation(), nn.MaxPool2d(2))
                                      for a, b in zip(chans, chans[1:])])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).flatten(1)
