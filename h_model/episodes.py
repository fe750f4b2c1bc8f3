"""N-way K-shot Q-query episodes, sampled in batches as index tensors over an ImageSet."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .data.imageset import ImageSet
from .preprocess import Preprocess

log = logging.getLogger(__name__)


@dataclass
class Episode:
    """A batch of B episodes. ``*_x`` are uint8 ``[B, N*K|N*Q, C, H, W]``, labels in 0..N-1."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: torch.Tensor  # [B, N] the ImageSet classes behind labels 0..N-1
    way: int
    support_idx: torch.Tensor | None = None  # [B, N*K] ImageSet indices of the support images
    query_idx: torch.Tensor | None = None  # [B, N*Q] ImageSet indices of the query images

    def to(self, device: torch.device | str, prep: Preprocess) -> "Episode":
        """Move to ``device`` (as uint8, 4x less traffic) and normalise there."""
        def img(x: torch.Tensor) -> torch.Tensor:
            return prep.normalize(x.to(device, non_blocking=True))
        return Episode(img(self.support_x), self.support_y.to(device), img(self.query_x),
                       self.query_y.to(device), self.classes, self.way, self.support_idx, self.query_idx)


def split_support_query(x: torch.Tensor, shot: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class items ``[B, N, K+Q, ...]`` (``shot`` = K support, then Q query) -> support
    ``[B, N*K, ...]``, its labels ``[B, N*K]``, query ``[B, N*Q, ...]``, its labels ``[B, N*Q]``;
    labels are 0..N-1, class-major, on ``x``'s device."""
    B, N, per = x.shape[:3]
    Q = per - shot
    labels = torch.arange(N, device=x.device).view(1, N, 1)
    support = x[:, :, :shot].reshape(B, N * shot, *x.shape[3:])
    query = x[:, :, shot:].reshape(B, N * Q, *x.shape[3:])
    return support, labels.expand(B, N, shot).reshape(B, N * shot), query, labels.expand(B, N, Q).reshape(B, N * Q)


class EpisodeSampler:
    """Draws ``episodes_per_batch`` episodes at a time, reproducibly from ``seed``.

    Classes with fewer than ``shot + query`` images are left out (with a warning); asking for
    more ways than there are usable classes raises ``ValueError`` at construction.
    """

    def __init__(self, data: ImageSet, way: int, shot: int, query: int,
                 episodes_per_batch: int = 1, seed: int = 0) -> None:
        if min(way, shot, query, episodes_per_batch) < 1:
            raise ValueError("way, shot, query and episodes_per_batch must all be >= 1")
        self.data, self.way, self.shot, self.query = data, way, shot, query
        self.batch = episodes_per_batch
        counts = torch.bincount(data.labels, minlength=data.num_classes)
        need = shot + query
        usable = (counts >= need).nonzero().flatten()
        dropped = data.num_classes - len(usable)
        if dropped:
            log.warning("%d of %d classes have fewer than shot+query=%d images and are left out of episodes",
                        dropped, data.num_classes, need)
        if way > len(usable):
            raise ValueError(f"{way}-way episodes need {way} classes with at least {need} images each; "
                             f"the data has {len(usable)}")
        self.classes = usable
        # [C_usable, max_count] table of image indices per class, padded with -1.
        order = torch.argsort(data.labels, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        cnt = counts[usable]
        width = int(cnt.max())
        pos = torch.arange(width)
        table = starts[usable, None] + pos[None, :]
        self.valid = pos[None, :] < cnt[:, None]
        self.table = torch.where(self.valid, order[table.clamp(max=len(order) - 1)], -1)
        self.generator = torch.Generator().manual_seed(seed)

    def sample_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(image indices ``[B, N, K+Q]``, ImageSet classes ``[B, N]``), no image reused."""
        B, N, g = self.batch, self.way, self.generator
        cls = torch.rand(B, len(self.classes), generator=g).argsort(dim=1)[:, :N]
        keys = torch.rand(B, N, self.table.shape[1], generator=g)
        keys = keys.masked_fill(~self.valid[cls], 2.0)  # padding sorts last
        pick = keys.argsort(dim=2)[:, :, : self.shot + self.query]
        idx = torch.gather(self.table[cls], 2, pick)
        return idx, self.classes[cls]

    def sample(self) -> Episode:
        idx, classes = self.sample_indices()
        imgs = self.data.images[idx.flatten()].view(*idx.shape, *self.data.images.shape[1:])
        sx, sy, qx, qy = split_support_query(imgs, self.shot)
        s_idx, _, q_idx, _ = split_support_query(idx, self.shot)
        return Episode(sx, sy, qx, qy, classes, self.way, s_idx, q_idx)

    def __iter__(self):
        while True:
            yield self.sample()
