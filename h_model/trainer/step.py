"""One training step: the learning-rate schedule, parameter groups, train mode, AMP, the optimiser step."""
from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from ..augment import Augment
from ..distill import TeacherTargets
from ..episodes import Episode
from ..models import FewShotModel
from ..preprocess import Preprocess
from ..runtime import cpu_has_native_bf16
from .config import TrainConfig

log = logging.getLogger("h_model.train")


def progress(cfg: TrainConfig, episode: int, elapsed_s: float) -> float:
    """Fraction of the run done: by episodes, or by wall time when a time limit comes first."""
    p = episode / max(cfg.episodes, 1)
    if cfg.time_limit_min:
        p = max(p, elapsed_s / (60.0 * cfg.time_limit_min))
    return min(p, 1.0)


def lr_factor(cfg: TrainConfig, episode: int, elapsed_s: float = 0.0) -> float:
    """Step decay by episodes; cosine decay over the run's progress (so a time-limited run
    still anneals fully within its budget); or constant."""
    if cfg.lr_schedule == "step":
        return cfg.lr_gamma ** (episode // cfg.lr_step)
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress(cfg, episode, elapsed_s)))
    return 1.0


def amp_settings(amp: bool, device: torch.device) -> tuple[torch.dtype, bool]:
    """(autocast dtype, whether to autocast): bf16 on CUDA where supported (else fp16 with a
    gradient scaler) and on CPUs with native bf16; on other CPUs float32 (bf16 would be emulated, slower)."""
    if device.type == "cuda":
        return (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16), amp
    if amp and not cpu_has_native_bf16():
        log.info("amp: this CPU has no native bfloat16 (AMX / AVX-512 BF16); training in float32")
        return torch.bfloat16, False
    return torch.bfloat16, amp


def param_groups(model: FewShotModel, distill: nn.Module | None, backbone_lr_scale: float) -> list[dict[str, Any]]:
    """Adam groups: the backbone at ``backbone_lr_scale`` times the learning rate, the rest (head,
    distillation projection) at the learning rate; a scale of 0 leaves the backbone out (frozen)."""
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    ids = {id(p) for p in model.backbone.parameters()}
    rest = [p for p in model.parameters() if id(p) not in ids and p.requires_grad]
    rest += list(distill.parameters()) if distill is not None else []
    groups = [{"params": rest, "lr_scale": 1.0}] if rest else []
    if backbone and backbone_lr_scale > 0:
        groups.append({"params": backbone, "lr_scale": float(backbone_lr_scale)})
    if not groups:
        raise ValueError("nothing to train: the backbone is frozen (backbone_lr_scale 0) and the head has no parameters")
    return groups


def set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    """Training mode; with ``freeze_bn`` every BatchNorm layer stays in eval mode, so it normalises
    with (and keeps) its running statistics, as fine-tuning a pretrained backbone on small episodes wants."""
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


class EpisodeLoss(nn.Module):
    """Wraps a model's ``episode_loss`` (``episode_loss_both_ways`` with ``both_ways``) as ``forward``
    so DistributedDataParallel can hook it.

    With a ``distill`` loss, the backbone's output for the episode (support then query, one
    call) is captured and matched to the teacher's embeddings of the same images.
    """

    def __init__(self, model: FewShotModel, distill: nn.Module | None = None, both_ways: bool = False) -> None:
        super().__init__()
        if both_ways and not model.trains_both_ways:
            raise ValueError(f"both_ways training needs a variant scored by its head on one backbone call; "
                             f"{type(model).__name__} has its own episode loss")
        self.model = model
        self.distill = distill
        self.loss_fn = model.episode_loss_both_ways if both_ways else model.episode_loss

    def forward(self, sx, sy, qx, qy, way: int, teacher_z: torch.Tensor | None = None):
        if self.distill is None or teacher_z is None:
            loss, logits = self.loss_fn(sx, sy, qx, qy, way)
            return loss, logits, None
        seen: list[torch.Tensor] = []
        hook = self.model.backbone.register_forward_hook(lambda m, i, o: seen.append(o))
        try:
            loss, logits = self.loss_fn(sx, sy, qx, qy, way)
        finally:
            hook.remove()
        if len(seen) != 1:
            raise RuntimeError(f"distillation needs a learner that embeds an episode in one backbone call; "
                               f"{type(self.model).__name__} made {len(seen)}")
        z = seen[0].reshape(teacher_z.shape[0], teacher_z.shape[1], -1)
        d, _ = self.distill(z, teacher_z)
        return loss + d, logits, d.detach()


class TrainStep:
    """Sets the learning rate, then steps the optimiser on one batch of episodes: augmentation,
    the teacher's targets, autocast, backward, (scaled) step. ``net`` is the :class:`EpisodeLoss`
    (or its DistributedDataParallel wrapper) around ``model``."""

    def __init__(self, cfg: TrainConfig, model: FewShotModel, net: nn.Module, opt: torch.optim.Optimizer,
                 device: torch.device, prep: Preprocess, augment: Augment | None = None,
                 aug_gen: torch.Generator | None = None, targets: TeacherTargets | None = None) -> None:
        self.cfg, self.model, self.net, self.opt = cfg, model, net, opt
        self.device, self.prep, self.augment, self.aug_gen, self.targets = device, prep, augment, aug_gen, targets
        self.amp_dtype, self.use_amp = amp_settings(cfg.amp, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)

    @property
    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def set_lr(self, episode: int, elapsed_s: float) -> None:
        for g in self.opt.param_groups:
            g["lr"] = self.cfg.lr * g["lr_scale"] * lr_factor(self.cfg, episode, elapsed_s)

    def __call__(self, episode: Episode) -> tuple[float, float, float | None]:
        """(loss, query accuracy, distillation loss or None) of the step on ``episode``."""
        set_train_mode(self.model, self.cfg.freeze_bn)  # (validation leaves the model in eval mode)
        ep = episode.to(self.device, self.prep)
        sx, qx = ep.support_x, ep.query_x
        if self.augment is not None:
            sx, qx = self.augment(sx, self.aug_gen), self.augment(qx, self.aug_gen)
        tz = None if self.targets is None else self.targets.of_episode(ep.support_idx, ep.query_idx)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            loss, logits, dloss = self.net(sx, ep.support_y, qx, ep.query_y, ep.way, tz)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        acc = float((logits.argmax(-1) == ep.query_y).float().mean())
        return float(loss.detach()), acc, None if dloss is None else float(dloss)
