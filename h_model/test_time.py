"""Test-time options of a few-shot model that cost no training.

A checkpoint's ``config.json`` may carry them as ``"test_time": {...}``; :class:`h_model.Learner`
and ``python -m h_model.evaluate`` (episodes and ``--lake-runs``) apply them. All default to off,
which is the model's own prediction, unchanged.

- ``shift`` / ``scale`` / ``rotate`` (test-time augmentation): every image is also embedded
  shifted by each ``shift`` (pixels of the model input, in the four directions), scaled by each
  ``scale`` factor and rotated by each ``rotate`` angle (degrees); its embedding is the mean over
  these views and the original. Deterministic (fixed warps, bilinear, border padding).
- ``center``: subtract the episode's mean embedding (support and queries) before the head;
  ``l2``: then scale every embedding to unit length.
- ``transductive_steps`` (Prototypical heads): soft k-means refinement of the prototypes with the
  queries (Ren et al. 2018): each step recomputes every prototype as the mean of its support
  embeddings and of all queries weighted by their softmax(logits / ``transductive_temperature``)
  membership: Ren et al.'s weights, scaled down when there are more queries than support
  images so that all queries together weigh as much as the support set (one query per class, as
  in Lake et al.'s runs, or fewer: unscaled; 15 per class: a fifteenth, so the queries cannot
  drown the labelled drawings).
- ``balanced``: the queries are assumed to fall equally into the classes (one per class in Lake
  et al.'s runs; ``query`` per class in an evaluation episode). The model's probabilities are
  rebalanced by Sinkhorn iterations so that every class receives the same total mass while every
  query keeps a distribution over the classes (the balanced transport of Hu et al. 2021's
  PT-MAP); the prediction becomes a near one-to-one assignment of queries to classes. It uses all
  queries together, and is wrong for query sets whose classes are not equally represented, so it
  belongs to the call (``Learner.predict(..., balanced=True)``) more than to a checkpoint. The
  number of queries must be a multiple of the number of classes.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F

from .models import FewShotModel
from .models.base import one_hot

__all__ = ["TestTime", "embed_view", "tta_embed", "tt_head", "balance", "parse_test_time"]


@dataclass(frozen=True)
class TestTime:
    """The options (see the module docstring); ``TestTime()`` is none."""

    __test__ = False  # a product class, not a pytest test class
    shift: tuple[float, ...] = ()
    scale: tuple[float, ...] = ()
    rotate: tuple[float, ...] = ()
    center: bool = False
    l2: bool = False
    transductive_steps: int = 0
    transductive_temperature: float = 1.0
    balanced: bool = False
    _views: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("shift", "scale", "rotate"):
            v = getattr(self, name)
            object.__setattr__(self, name, tuple(float(x) for x in ((v,) if isinstance(v, (int, float)) else v)))
        if any(s <= 0 for s in self.scale):
            raise ValueError(f"scale factors must be > 0, got {list(self.scale)}")
        if self.transductive_steps < 0 or self.transductive_temperature <= 0:
            raise ValueError("transductive_steps must be >= 0 and transductive_temperature > 0")
        views = [(0.0, 0.0, 1.0, 0.0)]  # (dx, dy, scale, degrees)
        views += [(dx * s, dy * s, 1.0, 0.0) for s in self.shift for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1))]
        views += [(0.0, 0.0, s, 0.0) for s in self.scale] + [(0.0, 0.0, 1.0, r) for r in self.rotate]
        object.__setattr__(self, "_views", tuple(views))

    @property
    def augments(self) -> bool:
        return len(self._views) > 1

    @property
    def is_default(self) -> bool:
        return self == TestTime()

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "TestTime":
        d = dict(d or {})
        known = {f.name for f in fields(cls) if f.init}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown test-time options {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Only the options that differ from the default."""
        default = TestTime()
        return {f.name: list(v) if isinstance(v, tuple) else v for f in fields(self) if f.init
                and (v := getattr(self, f.name)) != getattr(default, f.name)}


def parse_test_time(items: list[str], base: dict[str, Any] | None = None) -> TestTime:
    """``["shift=1", "rotate=10,-10", "l2=true"]`` over ``base`` (a checkpoint's entry); ``["none"]``: all off."""
    d = dict(base or {})
    for it in items:
        if it == "none":
            d = {}
            continue
        key, sep, value = it.partition("=")
        if not sep:
            raise ValueError(f"test-time option {it!r}: expected key=value (or 'none')")
        if key in ("shift", "scale", "rotate"):
            d[key] = [float(v) for v in value.split(",") if v]
        elif key in ("center", "l2", "balanced"):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"{key}={value}: expected true or false")
            d[key] = value.lower() in ("true", "1")
        elif key == "transductive_steps":
            d[key] = int(value)
        elif key == "transductive_temperature":
            d[key] = float(value)
        else:
            d[key] = value  # from_dict names the unknown key
    return TestTime.from_dict(d)


def _warp(x: torch.Tensor, dx: float, dy: float, scale: float, degrees: float) -> torch.Tensor:
    """``x`` ``[N, C, H, W]`` shifted by (dx, dy) pixels, scaled and rotated about its centre."""
    n, _, h, w = x.shape
    a = math.radians(degrees)
    cos, sin = math.cos(a) / scale, math.sin(a) / scale
    # affine_grid maps output to input coordinates in [-1, 1]: the inverse of the warp
    theta = torch.tensor([[cos, -sin, -2.0 * dx / w], [sin, cos, -2.0 * dy / h]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(n, 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@torch.no_grad()
def embed_view(model: FewShotModel, x: torch.Tensor, view: tuple[float, float, float, float]) -> torch.Tensor:
    """Embeddings of ``x`` warped by one view ``(dx, dy, scale, degrees)`` (a :class:`TestTime`'s ``_views``)."""
    return model.embed(x if view == (0.0, 0.0, 1.0, 0.0) else _warp(x, *view))


@torch.no_grad()
def tta_embed(model: FewShotModel, x: torch.Tensor, tt: TestTime, batch: int = 512) -> torch.Tensor:
    """Embeddings ``[N, D]`` of normalised images ``[N, C, H, W]``: the mean over ``tt``'s views."""
    out = []
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        zs = [embed_view(model, xb, v) for v in tt._views]
        out.append(zs[0] if len(zs) == 1 else torch.stack(zs).mean(0))
    return torch.cat(out)


def tt_head(model: FewShotModel, tt: TestTime, support_z: torch.Tensor, support_y: torch.Tensor,
            query_z: torch.Tensor, way: int) -> torch.Tensor:
    """The model's head with ``tt``'s embedding and prototype options: logits ``[B, Q, N]``."""
    if tt.center:
        mean = torch.cat([support_z, query_z], 1).mean(1, keepdim=True)
        support_z, query_z = support_z - mean, query_z - mean
    if tt.l2:
        support_z, query_z = F.normalize(support_z, dim=-1), F.normalize(query_z, dim=-1)
    logits = model.head(support_z, support_y, query_z, way)
    if tt.transductive_steps:
        from .models.proto import ProtoNet
        if not isinstance(model, ProtoNet):
            raise ValueError(f"transductive refinement needs a Prototypical head, not {type(model).__name__}")
        oh = one_hot(support_y, way, support_z.dtype)                       # [B, S, N]
        labels = torch.arange(way, device=support_z.device).expand(len(support_z), way)
        # each query weighs at most 1, and all together at most as much as the support set
        weight = min(1.0, support_z.shape[1] / query_z.shape[1])
        for _ in range(tt.transductive_steps):
            w = weight * torch.softmax(logits.float() / tt.transductive_temperature, -1).to(support_z.dtype)
            protos = (oh.transpose(1, 2) @ support_z + w.transpose(1, 2) @ query_z) \
                / (oh.sum(1) + w.sum(1)).unsqueeze(-1)                      # [B, N, D]
            logits = model.head(protos, labels, query_z, way)
    return balance(logits) if tt.balanced else logits


def balance(logits: torch.Tensor, iters: int = 100) -> torch.Tensor:
    """Log-probabilities ``[B, Q, N]`` whose rows sum to 1 and whose columns each sum to Q / N:
    Sinkhorn iterations from softmax(``logits``), in the log domain."""
    q, n = logits.shape[-2:]
    if q % n:
        raise ValueError(f"balanced=true needs the same number of queries for every class: {q} queries "
                         f"cannot fall equally into {n} classes")
    log_p = torch.log_softmax(logits.float(), -1)
    col = math.log(q / n)
    for _ in range(iters):
        log_p = log_p - torch.logsumexp(log_p, -2, keepdim=True) + col
        log_p = log_p - torch.logsumexp(log_p, -1, keepdim=True)
    return log_p
