"""Face runs of the trainer: the threshold calibration after training and a face teacher's targets.

    from h_model.faces.training import train
    train(TrainConfig(dataset="faces", teacher="dlib", ...))  # h_model.trainer.train with both

``face_extras(cfg)`` gives what a config asks for, as keyword arguments of ``h_model.trainer.train``.
"""
from __future__ import annotations

from typing import Any

from ..data import ImageSet
from ..distill import TeacherTargets
from ..trainer import FinishedRun, Monitor, PostTrainingHook, TeacherSource, TrainConfig
from ..trainer import train as train_episodes
from .calibrate import calibrate_checkpoint
from .teachers import embeddings_for, load_teacher

__all__ = ["CalibrateThreshold", "face_teacher", "face_extras", "train", "TrainConfig"]


class CalibrateThreshold(PostTrainingHook):
    """Calibrates the verification threshold on validation-identity pairs at false-accept rate
    ``far``, stores it (with the crop settings) in the checkpoint and reports pair verification
    on the test identities (``results["verification"]``)."""

    key = "verification"

    def __init__(self, far: float = 1e-3, margin: float = 0.2, alignment: str = "eyes") -> None:
        self.far, self.margin, self.alignment = far, margin, alignment

    def __call__(self, run: FinishedRun) -> dict[str, Any] | None:
        if run.val_set is None:
            return None
        return calibrate_checkpoint(run.out, run.model, run.val_set, run.test_set, run.device, self.far,
                                    margin=self.margin, alignment=self.alignment, test_embeddings=run.test_embeddings)

    def summary(self, v: dict[str, Any]) -> str:
        return (f"verification on {v['test_pairs']} test-identity pairs: {100 * v['accuracy']:.2f} "
                f"+-{100 * v['accuracy_std']:.2f} % (10-fold), AUC {v['auc']:.4f}, "
                f"TAR@FAR1e-3 {v['tar_at_far']['0.001']['tar']:.3f}; threshold {v['threshold']:.4f} at FAR {v['far']:g}")


def face_teacher(name: str, margin: float = 0.2, **kwargs: Any) -> TeacherSource:
    """The targets of face teacher ``name`` (``h_model.faces.teachers``) for a training set of crops."""
    def targets(train_set: ImageSet) -> TeacherTargets:
        teacher = load_teacher(name, **{"margin": margin, **kwargs})
        return TeacherTargets(teacher.id, embeddings_for(teacher, train_set.images, train_set.sources))
    return targets


def face_extras(cfg: TrainConfig) -> dict[str, Any]:
    """``hooks`` (face datasets: the threshold calibration) and ``teacher`` (when the config names one)."""
    margin = float(cfg.data_kwargs.get("margin", 0.2))
    extras: dict[str, Any] = {}
    if cfg.dataset == "faces":
        extras["hooks"] = [CalibrateThreshold(cfg.face_far, margin, str(cfg.data_kwargs.get("alignment", "eyes")))]
    if cfg.teacher:
        extras["teacher"] = face_teacher(cfg.teacher, margin, **cfg.teacher_kwargs)
    return extras


def train(cfg: TrainConfig, monitor: Monitor | None = None) -> dict[str, Any]:
    """``h_model.trainer.train`` with the face extras the config asks for."""
    return train_episodes(cfg, monitor, **face_extras(cfg))
