"""h_model: episodic few-shot learners (H-networks) and meta-learning baselines in PyTorch.

    import h_model
    learner = h_model.load("runs/proto")           # a run directory or model.safetensors
    pred = learner.predict(support_images, support_labels, query_images)
"""
from .bundled import bundled_path
from .checkpoint import load_checkpoint, save_checkpoint
from .data import DataNotFoundError, ImageSet
from .episodes import Episode, EpisodeSampler
from .learner import Learner, Prediction, load
from .models import FewShotModel, create_backbone, create_model, list_backbones, list_models
from .preprocess import ImageDecodeError, Preprocess

__version__ = "0.1.0"
__all__ = ["load", "Learner", "Prediction", "create_model", "list_models", "create_backbone", "list_backbones",
           "FewShotModel", "EpisodeSampler", "Episode", "ImageSet", "Preprocess", "ImageDecodeError",
           "DataNotFoundError", "save_checkpoint", "load_checkpoint", "bundled_path"]
from . import meta  # noqa: F401  (registers the meta-learning variants)
from .search import nas as _nas  # noqa: F401,E402  (registers the nas_cnn backbone)
