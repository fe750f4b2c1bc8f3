"""The one interface every few-shot learner implements, and the model registry."""
from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Registry
from .backbones import BACKBONES, backbone_defaults, create_backbone

MODELS = Registry("model")


class FewShotModel(nn.Module, ABC):
    """Embeds support and query images with a backbone, then a head scores queries per class.

    ``forward(support_x, support_y, query_x)`` takes one episode (``[S, C, H, W]``) or a batch
    of episodes (``[B, S, C, H, W]``) and returns class logits ``[(B,) Q, N]``.
    """

    #: True when, in eval mode, an image's embedding does not depend on the rest of its episode
    #: (so the evaluator embeds each test image once). Learners that adapt their weights to the
    #: support set (MAML and kin) set it False: they are evaluated episode by episode, with
    #: autograd available (``torch.no_grad``, never ``inference_mode``).
    embeds_independently: bool = True

    #: Test-time flip (``create_model(..., flip_embed=True)``): in eval mode an image's embedding is
    #: the mean of its own and its mirror image's, so it is the same for both, for twice the backbone
    #: cost. Training is unaffected. (The bundled face model has it on: chosen on validation pairs, see
    #: docs/faces.md.)
    flip_embed: bool = False

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., C, H, W]`` images -> ``[..., D]`` embeddings."""
        lead = x.shape[:-3]
        flat = x.reshape(-1, *x.shape[-3:])
        if self.flip_embed and not self.training:
            z = self.backbone(torch.cat([flat, flat.flip(-1)]))
            return ((z[:len(flat)] + z[len(flat):]) / 2).reshape(*lead, -1)
        return self.backbone(flat).reshape(*lead, -1)

    @abstractmethod
    def head(self, support_z: torch.Tensor, support_y: torch.Tensor, query_z: torch.Tensor,
             way: int) -> torch.Tensor:
        """Batched embeddings ``[B, S, D]``, labels ``[B, S]``, queries ``[B, Q, D]`` -> logits ``[B, Q, N]``."""

    def embed_episode(self, support_x: torch.Tensor, query_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One backbone call over support and query together (one BatchNorm batch, as in the papers)."""
        S, Q = support_x.shape[1], query_x.shape[1]
        z = self.embed(torch.cat([support_x, query_x], dim=1))
        return z[:, :S], z[:, S:S + Q]

    def forward(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                way: int | None = None) -> torch.Tensor:
        single = support_x.dim() == 4
        if single:
            support_x, support_y, query_x = support_x[None], support_y[None], query_x[None]
        way = int(support_y.max()) + 1 if way is None else way
        logits = self.episode_logits(support_x, support_y, query_x, way)
        return logits[0] if single else logits

    def episode_logits(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                       way: int) -> torch.Tensor:
        """Logits ``[B, Q, N]`` of a batch of episodes: the head on the episode's embeddings."""
        sz, qz = self.embed_episode(support_x, query_x)
        return self.head(sz, support_y, qz, way)

    def episode_loss(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                     query_y: torch.Tensor, way: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(training loss, logits). Cross-entropy over classes unless a variant overrides it."""
        logits = self(support_x, support_y, query_x, way)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), query_y.reshape(-1)), logits


    @property
    def trains_both_ways(self) -> bool:
        """Whether :meth:`episode_loss_both_ways` applies: the variant scores an episode by the base
        class's path (one backbone call, then the head) rather than its own loss or adaptation."""
        cls = type(self)
        return cls.episode_loss is FewShotModel.episode_loss and cls.episode_logits is FewShotModel.episode_logits

    def episode_loss_both_ways(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                               query_y: torch.Tensor, way: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(training loss, logits of the queries): the mean of the episode's cross-entropy and that of
        its swapped episode (the queries as the support set, the support images as its queries), both
        from the same embeddings: one backbone call, every image a query once."""
        if not self.trains_both_ways:
            raise ValueError(f"{type(self).__name__} has its own episode loss, so it cannot train both ways")
        single = support_x.dim() == 4
        if single:
            support_x, support_y, query_x, query_y = support_x[None], support_y[None], query_x[None], query_y[None]
        way = int(support_y.max()) + 1 if way is None else way
        sz, qz = self.embed_episode(support_x, query_x)
        logits = self.head(sz, support_y, qz, way)
        swapped = self.head(qz, query_y, sz, way)
        loss = 0.5 * (F.cross_entropy(logits.reshape(-1, way), query_y.reshape(-1))
                      + F.cross_entropy(swapped.reshape(-1, way), support_y.reshape(-1)))
        return loss, logits[0] if single else logits


class LogScaleMixin:
    """For heads whose learned inverse temperature is held as ``log_scale`` (None when not learned):
    a checkpoint from before, with the raw ``scale`` as the parameter, loads into it."""

    log_scale: nn.Parameter | None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "scale" in state_dict and self.log_scale is not None:
            state_dict[prefix + "log_scale"] = state_dict.pop(prefix + "scale").log()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def one_hot(y: torch.Tensor, way: int, dtype: torch.dtype) -> torch.Tensor:
    return F.one_hot(y, way).to(dtype)


def embedding_dim(backbone: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """The backbone's output size for one ``(C, H, W)`` image."""
    was = backbone.training
    backbone.eval()
    with torch.no_grad():
        p = next(backbone.parameters(), None)
        d = backbone(torch.zeros(2, *input_shape, device=None if p is None else p.device)).shape[-1]
    backbone.train(was)
    return int(d)


def create_model(name: str, backbone: str | nn.Module = "conv4", backbone_kwargs: dict[str, Any] | None = None,
                 input_shape: tuple[int, int, int] | None = None, **kwargs: Any) -> FewShotModel:
    """Build a registered variant: ``create_model('proto', backbone='conv4')`` or ``create_model('proto_conv4')``.

    Variants that need the embedding size (``dim``) get it from ``input_shape`` when not given.
    """
    if name not in MODELS and "_" in name:
        name, backbone = name.split("_", 1)
    if isinstance(backbone, str):
        backbone_kwargs = backbone_defaults(backbone, input_shape, backbone_kwargs or {})
    bb = backbone if isinstance(backbone, nn.Module) else create_backbone(backbone, **backbone_kwargs)
    factory = MODELS.get(name)
    if "dim" in inspect.signature(factory).parameters and kwargs.get("dim") is None and input_shape:
        kwargs["dim"] = embedding_dim(bb, tuple(input_shape))
    model = factory(bb, **{k: v for k, v in kwargs.items() if k != "flip_embed"})
    if kwargs.get("flip_embed"):
        if not model.embeds_independently:
            raise ValueError(f"flip_embed needs a model that embeds each image on its own; {name} adapts to the support set")
        model.flip_embed = True
    model.spec = {"variant": name, "backbone": backbone if isinstance(backbone, str) else type(backbone).__name__,
                  "backbone_kwargs": dict(backbone_kwargs or {}), "model_kwargs": kwargs}
    return model


def list_models() -> list[str]:
    return MODELS.names()
