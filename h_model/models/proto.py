"""Prototypical Networks (Snell et al. 2017)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import MODELS, FewShotModel, LogScaleMixin, one_hot


class ProtoNet(LogScaleMixin, FewShotModel):
    """Class prototype = mean support embedding; logits = -squared Euclidean distance.

    ``distance='cosine'`` uses scaled cosine similarity instead, with a learned inverse
    temperature held as ``log_scale`` (as in :class:`MatchingNet`: Adam moves a parameter by
    about its learning rate per step, so a raw scale crawls while its log moves by a ratio).
    """

    def __init__(self, backbone: nn.Module, distance: str = "euclidean", scale: float = 10.0) -> None:
        super().__init__(backbone)
        if distance not in ("euclidean", "cosine"):
            raise ValueError("distance must be 'euclidean' or 'cosine'")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.distance = distance
        self.log_scale = nn.Parameter(torch.tensor(float(scale)).log()) if distance == "cosine" else None

    @property
    def scale(self) -> torch.Tensor | None:
        return None if self.log_scale is None else self.log_scale.exp()

    def head(self, support_z, support_y, query_z, way):
        oh = one_hot(support_y, way, support_z.dtype)                    # [B, S, N]
        protos = oh.transpose(1, 2) @ support_z / oh.sum(1).unsqueeze(-1)  # [B, N, D]
        if self.distance == "cosine":
            return self.scale * F.normalize(query_z, dim=-1) @ F.normalize(protos, dim=-1).transpose(1, 2)
        # -||q - p||^2 = 2 q.p - ||q||^2 - ||p||^2, one batched matmul instead of a [Q, N, D] tensor
        q2 = query_z.pow(2).sum(-1, keepdim=True)
        p2 = protos.pow(2).sum(-1).unsqueeze(1)
        return torch.baddbmm(-(q2 + p2), query_z, protos.transpose(1, 2), alpha=2.0)


@MODELS.register("proto")
def proto(backbone: nn.Module, distance: str = "euclidean", scale: float = 10.0) -> ProtoNet:
    return ProtoNet(backbone, distance, scale)
