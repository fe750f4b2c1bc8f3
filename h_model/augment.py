"""Batched training-time augmentation of normalised image tensors (on whatever device they live).

Per image: horizontal flip, brightness/contrast jitter and a small random similarity transform
(rotation, scale, shift; borders replicate the edge). Used for face episodes, where the same
person is photographed at slightly different poses and lighting.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    """Strengths of each transform; 0 turns one off."""

    flip: float = 0.5  # probability of a horizontal flip
    brightness: float = 0.2  # additive shift, in units of the normalised range
    contrast: float = 0.2  # multiplicative factor in [1 - c, 1 + c]
    rotate_deg: float = 8.0
    scale: float = 0.08
    shift: float = 0.05  # fraction of the image side

    @classmethod
    def from_config(cls, value: bool | dict[str, Any] | None) -> "Augment | None":
        """``True`` -> defaults, a dict -> those strengths, ``False``/``None`` -> no augmentation."""
        if not value:
            return None
        return cls() if value is True else cls(**value)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[..., C, H, W]`` float images -> augmented copy of the same shape."""
        shape = x.shape
        x = x.reshape(-1, *shape[-3:])
        n, dev = x.shape[0], x.device

        def rand(*size: int) -> torch.Tensor:
            return torch.rand(*size, generator=generator).to(dev)

        if self.flip > 0:
            flip = rand(n) < self.flip
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.contrast > 0 or self.brightness > 0:
            c = 1 + self.contrast * (2 * rand(n, 1, 1, 1) - 1)
            b = self.brightness * (2 * rand(n, 1, 1, 1) - 1)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * c + mean + b
        if self.rotate_deg > 0 or self.scale > 0 or self.shift > 0:
            a = math.radians(self.rotate_deg) * (2 * rand(n) - 1)
            s = 1 + self.scale * (2 * rand(n) - 1)
            t = 2 * self.shift * (2 * rand(n, 2) - 1)  # grid coordinates span [-1, 1]
            cos, sin = torch.cos(a) / s, torch.sin(a) / s
            theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
            grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return x.reshape(shape)
