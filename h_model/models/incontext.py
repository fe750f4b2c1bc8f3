"""An in-context learner: a Transformer reads the labelled support set and the queries as one set.

No hand-designed rule joins support and query (no mean, distance or pair score): the backbone
embeds every image and a small Transformer encoder, trained end to end on episodes, learns how
a query's class follows from the labelled examples.

Labels enter as structure, not as a table of per-id vectors. A learned vector per label id
could only make the model invariant to renaming the classes approximately (by training on
shuffled ids); here it holds exactly, by construction:

* every class of the episode gets a **class token**, all starting from the same learned vector;
  a class token attends to its own support examples and itself, so it becomes that class's
  learned summary (its label embedding);
* **support tokens** (embedding + a learned "labelled" marker) attend to every support and
  class token, with a learned per-head attention bias for the tokens that carry their own label;
* **query tokens** (embedding + a learned "no label" marker) attend to every support and class
  token but not to other queries, so a query's prediction does not depend on the other queries;
* a query's logit for class ``k`` is the scaled dot product of its output with class token
  ``k``'s output.

There is no positional encoding, so the order of the support set cannot matter; permuting the
label ids permutes the logits; any way and shot work at test time.

``start="nearest_mean"`` (the default) initialises the value paths so the untrained network is
close to a nearest-mean classifier: attention values, attention outputs and the two read-outs
start as the identity and each MLP's last layer at zero, so a class token starts as (a constant
plus) the mean of its normalised support tokens and a query's logit as the dot product with it.
Every weight stays trainable; only the starting point differs. ``start="random"`` is PyTorch's
default initialisation.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import MODELS, FewShotModel


class LabelAttention(nn.Module):
    """Multi-head attention from every token to the keys (class and support tokens).

    ``same`` ``[B, Lq, Lk]`` (1 where token and key carry the same label, else 0) times a learned
    value per head is added to the attention scores; ``blocked`` ``[B, Lq, Lk]`` (True: not
    attended) masks pairs out.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.q, self.kv, self.out = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.label_bias = nn.Parameter(torch.zeros(heads))

    def forward(self, x: torch.Tensor, keys: torch.Tensor, same: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        H = self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, t.shape[1], H, D // H).transpose(1, 2)     # [B, H, L, D/H]

        q = split(self.q(x))
        k, v = (split(t) for t in self.kv(keys).chunk(2, dim=-1))
        mask = same.unsqueeze(1) * self.label_bias.view(1, H, 1, 1)     # [B, H, Lq, Lk]
        mask = mask.masked_fill(blocked.unsqueeze(1), float("-inf")).to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    """Pre-norm Transformer block: label-aware attention to the keys, then an MLP."""

    def __init__(self, dim: int, heads: int, mlp: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = LabelAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, n_keys: int, same: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h[:, :n_keys], same, blocked))
        return x + self.drop(self.mlp(self.norm2(x)))


class InContextNet(FewShotModel):
    """Backbone embeddings -> class, support and query tokens -> Transformer -> query-class logits."""

    def __init__(self, backbone: nn.Module, dim: int | None = None, width: int = 128, depth: int = 2,
                 heads: int = 4, mlp: int = 256, dropout: float = 0.0, start: str = "nearest_mean") -> None:
        super().__init__(backbone)
        if dim is None:
            raise ValueError("InContextNet needs the backbone's embedding dimension `dim` "
                             "(create_model(..., input_shape=(C, H, W)) fills it in)")
        if min(width, depth, heads, mlp) < 1:
            raise ValueError("width, depth, heads and mlp must all be >= 1")
        self.proj = nn.Linear(dim, width)
        self.class_token = nn.Parameter(torch.randn(width) * 0.02)
        self.labelled = nn.Parameter(torch.randn(width) * 0.02)   # marker of support tokens
        self.no_label = nn.Parameter(torch.randn(width) * 0.02)   # marker of query tokens
        self.blocks = nn.ModuleList(Block(width, heads, mlp, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.read_query, self.read_class = nn.Linear(width, width), nn.Linear(width, width)
        if start == "nearest_mean":
            self.start_near_nearest_mean()
        elif start != "random":
            raise ValueError(f"start must be 'nearest_mean' or 'random', not {start!r}")

    @torch.no_grad()
    def start_near_nearest_mean(self) -> None:
        """Identity value, output and read-out maps, zero MLP outputs (see the module docstring)."""
        width = self.norm.normalized_shape[0]
        eye = torch.eye(width)
        for block in self.blocks:
            block.attn.kv.weight[width:].copy_(eye)
            block.attn.kv.bias[width:].zero_()
            block.attn.out.weight.copy_(eye)
            block.attn.out.bias.zero_()
            block.mlp[-1].weight.zero_()
            block.mlp[-1].bias.zero_()
        for read in (self.read_query, self.read_class):
            read.weight.copy_(eye)
            read.bias.zero_()

    @staticmethod
    def structure(support_y: torch.Tensor, way: int, queries: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(same-label indicator, blocked pairs), each ``[B, way+S+Q, way+S]`` over (token, key).

        Tokens are ordered class tokens, support, queries; keys are the class and support tokens.
        """
        B = support_y.shape[0]
        dev = support_y.device
        cls = torch.arange(way, device=dev).expand(B, way)
        key_y = torch.cat([cls, support_y], 1)                                   # [B, N+S]
        tok_y = torch.cat([key_y, torch.full((B, queries), -1, device=dev)], 1)  # queries: no label
        same = tok_y.unsqueeze(2) == key_y.unsqueeze(1)                          # [B, L, N+S]
        blocked = torch.zeros_like(same)
        blocked[:, :way] = ~same[:, :way]  # a class token attends to its own examples and itself only
        same[:, :way] = False              # (there the mask already says which keys are its own)
        return same.to(torch.get_default_dtype()), blocked

    def head(self, support_z, support_y, query_z, way):
        B, Q = query_z.shape[:2]
        if int(support_y.min()) < 0 or int(support_y.max()) >= way:
            raise ValueError(f"support labels must lie in 0..{way - 1}")
        s, q = self.proj(support_z) + self.labelled, self.proj(query_z) + self.no_label
        x = torch.cat([self.class_token.to(s.dtype).expand(B, way, -1), s, q.to(s.dtype)], 1)
        same, blocked = self.structure(support_y, way, Q)
        n_keys = way + support_z.shape[1]
        for block in self.blocks:
            x = block(x, n_keys, same, blocked)
        x = self.norm(x)
        c, q = self.read_class(x[:, :way]), self.read_query(x[:, n_keys:])
        return q @ c.transpose(1, 2) / math.sqrt(c.shape[-1])


@MODELS.register("transformer")
def transformer(backbone: nn.Module, dim: int | None = None, width: int = 128, depth: int = 2, heads: int = 4,
                mlp: int = 256, dropout: float = 0.0, start: str = "nearest_mean") -> InContextNet:
    return InContextNet(backbone, dim, width, depth, heads, mlp, dropout, start)
