"""Siamese Networks (Koch et al. 2015) trained on same/different pairs drawn from episodes."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import MODELS, FewShotModel, one_hot


class SiameseNet(FewShotModel):
    """Twin backbone; pair logit = w . |z_a - z_b| + b (sigmoid gives p(same)).

    An optional ``hidden`` layer with sigmoid (Koch et al.'s 4096-unit layer, smaller here)
    sits between backbone and distance. A query's logit for a class is its best pair logit
    over that class's support examples: one-shot classification by the most similar example.
    With several shots, ``pool="mean"`` averages the pair logits over the class's examples
    instead (a test-time choice: the pair loss does not depend on it).
    """

    POOLS = ("max", "mean")

    def __init__(self, backbone: nn.Module, dim: int | None = None, hidden: int = 0, pool: str = "max") -> None:
        super().__init__(backbone)
        if pool not in self.POOLS:
            raise ValueError(f"pool must be one of {self.POOLS}, got {pool!r}")
        self.pool = pool
        if dim is None:
            raise ValueError("SiameseNet needs the backbone's embedding dimension `dim` "
                             "(create_model(..., input_shape=(C, H, W)) fills it in)")
        self.proj = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid()) if hidden else nn.Identity()
        self.distance = nn.Linear(hidden or dim, 1)

    def embed(self, x):
        return self.proj(super().embed(x))

    def pair_logits(self, support_z: torch.Tensor, query_z: torch.Tensor) -> torch.Tensor:
        """``[B, Q, S]`` same-person logits between every query and support example."""
        return self.distance((query_z.unsqueeze(2) - support_z.unsqueeze(1)).abs()).squeeze(-1)

    @staticmethod
    def class_logits(pairs: torch.Tensor, support_y: torch.Tensor, way: int, pool: str = "max") -> torch.Tensor:
        """Best (``max``) or mean pair logit per class: ``[B, Q, S]`` -> ``[B, Q, N]``."""
        onehot = one_hot(support_y, way, pairs.dtype)                      # [B, S, N]
        if pool == "mean":
            return pairs @ (onehot / onehot.sum(1, keepdim=True).clamp_min(1))
        return pairs.unsqueeze(-1).masked_fill(~onehot.bool().unsqueeze(1), float("-inf")).amax(dim=2)

    def head(self, support_z, support_y, query_z, way):
        return self.class_logits(self.pair_logits(support_z, query_z), support_y, way, self.pool)

    def episode_loss(self, support_x, support_y, query_x, query_y, way=None):
        """Binary cross-entropy over all (query, support) pairs, positives up-weighted to balance."""
        if support_x.dim() == 4:
            support_x, support_y, query_x, query_y = support_x[None], support_y[None], query_x[None], query_y[None]
        way = int(support_y.max()) + 1 if way is None else way
        sz, qz = self.embed_episode(support_x, query_x)
        pairs = self.pair_logits(sz, qz)
        same = (query_y.unsqueeze(2) == support_y.unsqueeze(1)).to(pairs.dtype)
        pos_weight = torch.tensor(float(max(way - 1, 1)), device=pairs.device)
        loss = F.binary_cross_entropy_with_logits(pairs, same, pos_weight=pos_weight)
        return loss, self.class_logits(pairs, support_y, way, self.pool)


@MODELS.register("siamese")
def siamese(backbone: nn.Module, dim: int | None = None, hidden: int = 0, pool: str = "max") -> SiameseNet:
    return SiameseNet(backbone, dim, hidden, pool)
