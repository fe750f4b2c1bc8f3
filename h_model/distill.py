"""Distillation of a frozen teacher's embeddings into a student embedder.

``DistillLoss`` combines two terms, both per episode (inputs ``[M, D]`` or ``[..., M, D]``):

- embedding: ``mean(1 - cos(P s_i, t_i))`` with ``P`` a learned linear map from the student's
  space to the teacher's (bias-free; the identity when the dimensions match and ``project`` is
  not asked for);
- relation: MSE between the student's and the teacher's ``M x M`` cosine-similarity matrices
  (diagonal included), computed on the student's own embeddings, so it shapes the geometry the
  few-shot head measures distances in, whatever ``P`` learns.

The module owns ``P``'s parameters: give them to the optimizer with the student's.
:class:`TeacherTargets` holds what is distilled: the teacher's embedding of every training image.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def cosine_matrix(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pairwise cosine similarities ``[..., M, M]`` of ``[..., M, D]``."""
    u = F.normalize(z, dim=-1, eps=eps)
    return u @ u.transpose(-1, -2)


class DistillLoss(nn.Module):
    """``embed_weight * (1 - cos(P s, t)).mean() + relation_weight * MSE(cos(s, s'), cos(t, t'))``.

    ``project``: ``None`` (default) learns ``P`` only when ``student_dim != teacher_dim``;
    ``True`` always learns it; ``False`` demands equal dimensions and uses the identity.
    ``forward`` returns ``(loss, parts)``: the weighted scalar loss (float32) and the unweighted
    terms ``{"distill_embed", "distill_relation"}`` as detached tensors. Computed in float32,
    outside autocast, so AMP inputs (float16/bfloat16) are fine.
    """

    def __init__(self, student_dim: int, teacher_dim: int, embed_weight: float = 1.0, relation_weight: float = 1.0,
                 project: bool | None = None) -> None:
        super().__init__()
        if embed_weight < 0 or relation_weight < 0:
            raise ValueError("loss weights must be >= 0")
        if project is False and student_dim != teacher_dim:
            raise ValueError(f"project=False needs equal dimensions, got student {student_dim} and teacher {teacher_dim}")
        self.student_dim, self.teacher_dim = int(student_dim), int(teacher_dim)
        self.embed_weight, self.relation_weight = float(embed_weight), float(relation_weight)
        learn = project if project is not None else student_dim != teacher_dim
        self.proj: nn.Module = nn.Linear(student_dim, teacher_dim, bias=False) if learn else nn.Identity()

    def forward(self, student_z: torch.Tensor, teacher_z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if student_z.shape[:-1] != teacher_z.shape[:-1] or student_z.dim() < 2:
            raise ValueError(f"need matching [..., M, D] inputs, got student {tuple(student_z.shape)} "
                             f"and teacher {tuple(teacher_z.shape)}")
        if student_z.shape[-1] != self.student_dim or teacher_z.shape[-1] != self.teacher_dim:
            raise ValueError(f"expected dims {self.student_dim} (student) and {self.teacher_dim} (teacher), "
                             f"got {student_z.shape[-1]} and {teacher_z.shape[-1]}")
        with torch.autocast(device_type=student_z.device.type, enabled=False):
            s = student_z.float()
            t = teacher_z.detach().float()
            embed = (1.0 - F.cosine_similarity(self.proj(s), t, dim=-1, eps=1e-8)).mean()
            relation = F.mse_loss(cosine_matrix(s), cosine_matrix(t))
            loss = self.embed_weight * embed + self.relation_weight * relation
        return loss, {"distill_embed": embed.detach(), "distill_relation": relation.detach()}

    def extra_repr(self) -> str:
        return (f"student_dim={self.student_dim}, teacher_dim={self.teacher_dim}, "
                f"embed_weight={self.embed_weight}, relation_weight={self.relation_weight}")


@dataclass
class TeacherTargets:
    """A frozen teacher's embeddings ``[N, D]`` of a training set, row ``i`` for its image ``i``.

    Whoever knows the teacher builds them (``h_model.faces.training`` for the face teachers) and
    gives the trainer a function ``ImageSet -> TeacherTargets``.
    """

    teacher_id: str
    embeddings: torch.Tensor

    def __post_init__(self) -> None:
        if self.embeddings.dim() != 2:
            raise ValueError(f"teacher embeddings must be [N, D], got {tuple(self.embeddings.shape)}")
        self.embeddings = self.embeddings.float()

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def to(self, device: torch.device | str) -> "TeacherTargets":
        return TeacherTargets(self.teacher_id, self.embeddings.to(device))

    def of_episode(self, support_idx: torch.Tensor, query_idx: torch.Tensor) -> torch.Tensor:
        """Targets ``[B, S + Q, D]`` of an episode batch's support then query images (ImageSet indices)."""
        return self.embeddings[torch.cat([support_idx, query_idx], 1).to(self.embeddings.device)]
