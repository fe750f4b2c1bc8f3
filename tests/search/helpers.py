"""Tiny real child tasks for the search tests (no data on disk needed)."""
from __future__ import annotations

from h_model.search.task import ChildConfig, FewShotTask
from tests.conftest import tiny_imageset


def tiny_task(steps: int = 1, size: int = 28) -> FewShotTask:
    cfg = ChildConfig(way=3, shot=1, query=2, steps=steps, val_way=3, val_shot=1, val_query=2, val_episodes=10)
    return FewShotTask(tiny_imageset(classes=8, per_class=4, size=size, seed=0),
                       tiny_imageset(classes=6, per_class=4, size=size, seed=1), cfg)
