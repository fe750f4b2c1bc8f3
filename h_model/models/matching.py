"""Matching Networks (Vinyals et al. 2016), with optional full context embeddings."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import MODELS, FewShotModel, LogScaleMixin, one_hot


class FullContextEmbedding(nn.Module):
    """g: bidirectional LSTM over the support set; f: attention LSTM over g for each query."""

    def __init__(self, dim: int, steps: int = 5) -> None:
        super().__init__()
        self.g = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
        self.f = nn.LSTMCell(dim, dim)
        self.steps = steps

    def support(self, z: torch.Tensor) -> torch.Tensor:
        """g(x_i) = forward state + backward state + g'(x_i), over the support sequence ``[B, S, D]``."""
        h, _ = self.g(z)
        d = z.shape[-1]
        return z + h[..., :d] + h[..., d:]

    def query(self, q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """K steps of attention LSTM: h_k = LSTM(f'(x), h_{k-1} + r_{k-1}) + f'(x)."""
        B, Q, D = q.shape
        x = q.reshape(B * Q, D)
        h, c = torch.zeros_like(x), torch.zeros_like(x)
        r = torch.zeros_like(x)
        gb = g.repeat_interleave(Q, dim=0)                     # [B*Q, S, D]
        for _ in range(self.steps):
            h, c = self.f(x, (h + r, c))
            h = h + x
            attn = torch.softmax((gb @ h.unsqueeze(-1)).squeeze(-1), dim=-1)
            r = (attn.unsqueeze(-1) * gb).sum(1)
        return h.view(B, Q, D)


class MatchingNet(LogScaleMixin, FewShotModel):
    """p(y|x, S) = sum_i softmax_i(scale * cos(f(x), g(x_i))) y_i.

    ``scale`` is an inverse temperature on the cosine (the paper's softmax over raw cosines is
    scale=1 fixed). Learned, it is held as ``log_scale``: Adam moves a parameter by about its
    learning rate per step, so a raw scale would crawl (10 -> 12.5 in 5,000 steps) while its
    log moves it by a ratio.
    """

    def __init__(self, backbone: nn.Module, fce: bool = False, fce_steps: int = 5, dim: int | None = None,
                 scale: float = 10.0, learn_scale: bool = True) -> None:
        super().__init__(backbone)
        self.fce = FullContextEmbedding(dim, fce_steps) if fce else None
        if fce and dim is None:
            raise ValueError("fce=True needs the embedding dimension `dim`")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        s = torch.tensor(float(scale))
        self.log_scale = nn.Parameter(s.log()) if learn_scale else None
        if not learn_scale:
            self.register_buffer("fixed_scale", s)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp() if self.log_scale is not None else self.fixed_scale

    def head(self, support_z, support_y, query_z, way):
        if self.fce is not None:
            support_z = self.fce.support(support_z)
            query_z = self.fce.query(query_z, support_z)
        sims = self.scale * F.normalize(query_z, dim=-1) @ F.normalize(support_z, dim=-1).transpose(1, 2)
        probs = torch.softmax(sims, dim=-1) @ one_hot(support_y, way, sims.dtype)  # [B, Q, N]
        return probs.clamp_min(1e-8).log()


@MODELS.register("matching")
def matching(backbone: nn.Module, fce: bool = False, fce_steps: int = 5, dim: int | None = None,
             scale: float = 10.0, learn_scale: bool = True) -> MatchingNet:
    return MatchingNet(backbone, fce, fce_steps, dim, scale, learn_scale)
