"""Shared pieces of the learners that adapt their weights to each support set (MAML and kin).

The *learner* is the backbone plus a linear classifier head. Its head has ``max_way`` rows whose
initial values are meta-learned; an N-way episode uses the first N rows. They start at zero
(``head_std=0``: all rows equal, so the episode's arbitrary label order is treated alike) or, with
``head_std > 0``, random normal as in Finn et al. With a zero head the first inner step leaves the
backbone unchanged (the feature gradient sums equal rows against ``p - y``), so first-order MAML
then learns the backbone through the query features only; ``fomaml`` starts from a random head.

BatchNorm: the backbone's BatchNorm layers are replaced by :class:`BatchStatNorm` (batch
statistics only, no running statistics, in training *and* at test time; same affine
parameters and state-dict names), as in the MAML paper and Ravi & Larochelle: every
forward pass of the learner normalises with the statistics of the images it is given (one
task's support set in the inner loop, that task's query set after adaptation). Predictions
for a query therefore depend on the other queries of its episode (transductive, as there).
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..models.backbones import Conv4, ResNet12
from ..models.base import FewShotModel

Params = dict[str, torch.Tensor]


class BatchStatNorm(nn.Module):
    """BatchNorm that always normalises with the statistics of its input batch (no running stats).

    Written with elementary ops on purpose: in PyTorch 2.14, ``F.batch_norm`` under
    ``torch.func.vmap`` yields wrong second-order (MAML) meta-gradients; this version matches
    finite differences (tests/meta). Same parameter names as ``nn.BatchNorm*d``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        mean = x.mean(dims, keepdim=True)
        var = (x - mean).pow(2).mean(dims, keepdim=True)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y


def use_batch_statistics(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm in ``module`` by a :class:`BatchStatNorm` sharing its affine parameters."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                new = BatchStatNorm(child.num_features, child.eps, child.affine)
                if child.affine:
                    new.weight, new.bias = child.weight, child.bias
                setattr(parent, name, new)
    return module


def backbone_call(backbone: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """``backbone(x)`` with ``params``, safe inside ``torch.func.vmap``.

    Conv4 and ResNet12 convert their input to channels-last, which ``vmap`` does not support;
    their layer stacks are called directly instead (the same function, default memory layout).
    """
    if isinstance(backbone, (Conv4, ResNet12)):
        name = "layers" if isinstance(backbone, Conv4) else "blocks"
        sub = {k[len(name) + 1:]: v for k, v in params.items()}
        y = functional_call(getattr(backbone, name), sub, (x,))
        return y.flatten(1) if isinstance(backbone, Conv4) else y.mean(dim=(2, 3))
    return functional_call(backbone, params, (x,))


class AdaptiveLearner(FewShotModel):
    """Backbone + linear head adapted per task; subclasses define :meth:`run` (the adaptation)."""

    embeds_independently = False

    def __init__(self, backbone: nn.Module, dim: int, max_way: int = 20, head_std: float = 0.0) -> None:
        super().__init__(use_batch_statistics(backbone))
        self.max_way = max_way
        self.head_w = nn.Parameter(torch.randn(max_way, dim) * head_std)
        self.head_b = nn.Parameter(torch.zeros(max_way))

    def learner_params(self, way: int) -> Params:
        """The learner's initial parameters phi for a ``way``-way task (head rows ``:way``)."""
        if way > self.max_way:
            raise ValueError(f"{way}-way episodes exceed this model's max_way={self.max_way}")
        p = {f"backbone.{k}": v for k, v in self.backbone.named_parameters()}
        p["head_w"], p["head_b"] = self.head_w[:way], self.head_b[:way]
        return p

    def learner_logits(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[S, N]`` of images ``[S, C, H, W]`` under the learner parameters ``params``."""
        bb = {k[9:]: v for k, v in params.items() if k.startswith("backbone.")}
        z = backbone_call(self.backbone, bb, x) if bb else x
        return z @ params["head_w"].T + params["head_b"]

    @abstractmethod
    def run(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, way: int,
            head_only: bool = False) -> tuple[torch.Tensor, Any]:
        """Adapt on each task's support set; (query logits ``[B, Q, N]``, variant-specific extra).

        ``head_only``: the inputs are embeddings ``[B, S, D]`` and only the head is adapted.
        """

    def episode_logits(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                       way: int) -> torch.Tensor:
        """Query logits ``[B, Q, N]`` after adapting to each episode's support set."""
        return self.run(support_x, support_y, query_x, way)[0]

    def head(self, support_z: torch.Tensor, support_y: torch.Tensor, query_z: torch.Tensor,
             way: int) -> torch.Tensor:
        """Head-only adaptation on fixed embeddings (ANIL, Raghu et al. 2020): logits ``[B, Q, N]``."""
        return self.run(support_z, support_y, query_z, way, head_only=True)[0]

    def episode_loss(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                     query_y: torch.Tensor, way: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(meta-loss: query cross-entropy after adaptation, query logits)."""
        way = int(support_y.max()) + 1 if way is None else way
        logits, _ = self.run(support_x, support_y, query_x, way)
        return F.cross_entropy(logits.reshape(-1, way), query_y.reshape(-1)), logits

    def task_params(self, way: int, head_only: bool, outer: bool) -> Params:
        """phi for this call: head only or all; detached when no meta-gradient is wanted."""
        p = self.learner_params(way)
        if head_only:
            p = {k: p[k] for k in ("head_w", "head_b")}
        return p if outer else {k: v.detach() for k, v in p.items()}
