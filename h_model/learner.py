"""The public prediction API: ``h_model.load(path)`` returns a :class:`Learner`."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Hashable, Sequence

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .models import FewShotModel
from .preprocess import ImageInput, Preprocess, load_images
from .test_time import TestTime, tta_embed, tt_head


@dataclass
class Prediction:
    """``labels[i]`` is the predicted label of query i; ``probs[i, j]`` the probability of ``classes[j]``."""

    labels: list[Hashable]
    probs: np.ndarray
    classes: list[Hashable]


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Learner:
    """A trained few-shot model together with its own preprocessing.

    Images may be file paths, PIL images, numpy arrays or tensors; labels any hashable values.
    ``test_time`` (default: the config's ``"test_time"`` entry) holds the test-time options
    :meth:`predict` applies (:class:`h_model.test_time.TestTime`); set it to ``TestTime()`` for none.
    """

    def __init__(self, model: FewShotModel, preprocess: Preprocess, config: dict[str, Any] | None = None,
                 device: str | torch.device | None = "auto", test_time: TestTime | None = None) -> None:
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.preprocess = preprocess
        self.config = config or {}
        self.test_time = TestTime.from_dict(self.config.get("test_time")) if test_time is None else test_time

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = "auto") -> "Learner":
        model, config = load_checkpoint(path)
        return cls(model, Preprocess.from_dict(config["preprocess"]), config, device)

    def tensors(self, images: Sequence[ImageInput] | torch.Tensor) -> torch.Tensor:
        """Decode and normalise images exactly as in training: float ``[N, C, H, W]`` on the device."""
        x = images if isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.dim() == 4 \
            else load_images(images, self.preprocess)
        return self.preprocess.normalize(x.to(self.device))

    @torch.inference_mode()
    def embed(self, images: Sequence[ImageInput], batch_size: int = 256) -> np.ndarray:
        """Embeddings ``[N, D]`` (float32 numpy)."""
        x = self.tensors(images)
        return torch.cat([self.model.embed(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).float().cpu().numpy()

    @torch.no_grad()  # not inference_mode: MAML-style learners adapt with autograd inside
    def predict(self, support_images: Sequence[ImageInput], support_labels: Sequence[Hashable],
                query_images: Sequence[ImageInput], balanced: bool | None = None) -> Prediction:
        """Classify queries among the support set's classes, in the caller's own label values.

        ``balanced=True`` states that every class has the same number of queries (one per class
        in Lake et al.'s runs) and assigns them jointly under that constraint (see
        :mod:`h_model.test_time`); ``None`` takes the ``balanced`` test-time option.
        """
        if len(support_images) != len(support_labels):
            raise ValueError(f"{len(support_images)} support images but {len(support_labels)} labels")
        classes = list(dict.fromkeys(support_labels))
        if len(classes) < 2:
            raise ValueError("the support set needs at least two different labels")
        index = {c: i for i, c in enumerate(classes)}
        sy = torch.tensor([index[c] for c in support_labels], device=self.device)
        tt = self.test_time if balanced is None else replace(self.test_time, balanced=balanced)
        if tt.is_default:
            logits = self.model(self.tensors(support_images), sy, self.tensors(query_images), way=len(classes))
        else:
            if not self.model.embeds_independently:
                raise ValueError(f"test-time options {tt.to_dict()} need a model that embeds images independently")
            sz, qz = (tta_embed(self.model, self.tensors(x), tt) for x in (support_images, query_images))
            logits = tt_head(self.model, tt, sz[None], sy[None], qz[None], len(classes))[0]
        probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        return Prediction([classes[i] for i in probs.argmax(1)], probs, classes)


def load(path: str | Path, device: str | torch.device | None = "auto") -> Learner:
    """Load a checkpoint (run directory or ``model.safetensors``) as a ready :class:`Learner`."""
    return Learner.load(path, device)
