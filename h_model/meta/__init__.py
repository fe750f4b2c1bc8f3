"""Gradient-based meta-learning baselines, registered in the shared model registry:
``maml``, ``fomaml``, ``metasgd``, ``reptile`` (:mod:`.maml`) and ``lstm`` (:mod:`.lstm_meta`)."""
from . import lstm_meta, maml  # noqa: F401  (register the variants)
from .common import AdaptiveLearner, use_batch_statistics
from .lstm_meta import LSTMMetaLearner
from .maml import GradientMetaLearner

__all__ = ["AdaptiveLearner", "GradientMetaLearner", "LSTMMetaLearner", "use_batch_statistics"]
