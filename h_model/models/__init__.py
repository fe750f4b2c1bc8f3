"""Few-shot learners (registered by name) and their backbones."""
from . import dlib_resnet, incontext, matching, proto, sface, siamese  # noqa: F401  (register the variants and the sface/dlib_resnet backbones)
from .backbones import BACKBONES, create_backbone, list_backbones
from .base import MODELS, FewShotModel, create_model, embedding_dim, list_models

__all__ = ["FewShotModel", "create_model", "list_models", "create_backbone", "list_backbones",
           "embedding_dim", "MODELS", "BACKBONES"]
