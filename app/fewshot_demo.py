"""The few-shot side of the demo: the same H-network learner on Omniglot characters (no UI).

A support set of N characters, one drawing each (sampled from the Omniglot evaluation alphabets,
uploaded, or drawn), and one query: :meth:`h_model.Learner.predict` gives each class's probability.
"""
from __future__ import annotations

import random
import string
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from h_model import Learner
from h_model.data.root import resolve_data_root

from .uploads import InputError, read_upload

MAX_WAY = 20
LETTERS = string.ascii_uppercase


def default_omniglot_root() -> Path | None:
    """``omniglot-py/images_evaluation`` under the data root (:func:`~h_model.data.resolve_data_root`:
    ``$H_DATA_ROOT``, else the user's data cache), if present."""
    folder = resolve_data_root() / "omniglot-py" / "images_evaluation"
    return folder if folder.is_dir() else None


def sketch_to_image(value: Any, size: int = 105) -> Image.Image | None:
    """A sketchpad value (Gradio ImageEditor dict or an RGBA array) -> dark strokes on white, cropped
    to the ink with a margin like Omniglot's drawings; ``None`` when nothing was drawn."""
    if isinstance(value, dict):
        value = value.get("composite")
    if value is None:
        return None
    a = np.asarray(value.convert("RGBA") if isinstance(value, Image.Image) else value)
    if a.ndim == 2:
        gray = a.astype(np.float32)
    else:
        rgb = a[..., :3].astype(np.float32).mean(-1)
        alpha = a[..., 3].astype(np.float32) / 255.0 if a.shape[-1] == 4 else 1.0
        gray = rgb * alpha + 255.0 * (1.0 - alpha)  # transparent canvas = white paper
    ink = gray < 128
    if ink.sum() < 5:
        return None
    ys, xs = np.nonzero(ink)
    side = int(max(ys.max() - ys.min(), xs.max() - xs.min()) * 1.4) + 4
    cy, cx = (ys.max() + ys.min()) // 2, (xs.max() + xs.min()) // 2
    canvas = np.full((side, side), 255, np.uint8)
    y0, x0 = cy - side // 2, cx - side // 2
    src = np.where(ink, 0, 255).astype(np.uint8)
    ys0, xs0 = max(y0, 0), max(x0, 0)
    ys1, xs1 = min(y0 + side, src.shape[0]), min(x0 + side, src.shape[1])
    canvas[ys0 - y0:ys1 - y0, xs0 - x0:xs1 - x0] = src[ys0:ys1, xs0:xs1]
    return Image.fromarray(canvas).resize((size, size), Image.BILINEAR)


class FewShotDemo:
    """An Omniglot checkpoint (``learner``) and, when present, the evaluation characters to sample from."""

    def __init__(self, learner: Learner, model_path: str | Path, omniglot_root: str | Path | None = None) -> None:
        self.learner = learner
        self.model_path = Path(model_path)
        self.root = Path(omniglot_root) if omniglot_root else None
        self._chars: list[Path] | None = None

    def characters(self) -> list[Path]:
        """Every ``<alphabet>/<character>`` folder of the Omniglot root (scanned once)."""
        if self._chars is None:
            if self.root is None or not self.root.is_dir():
                self._chars = []
            else:
                self._chars = sorted(c for a in self.root.iterdir() if a.is_dir() for c in a.iterdir() if c.is_dir())
        return self._chars

    def sample(self, way: int, seed: int | None = None) -> tuple[list[tuple[Image.Image, str]], Image.Image, str]:
        """``way`` random characters, one drawing each, labelled A, B, ...; a query: another drawer's
        version of one of them; and that query's true label."""
        chars = self.characters()
        if not chars:
            raise InputError("The Omniglot images are not available here: upload or draw the characters instead.")
        way = int(way)
        if not 2 <= way <= MAX_WAY:
            raise InputError(f"Choose between 2 and {MAX_WAY} characters.")
        rng = random.Random(None if seed is None or seed < 0 else int(seed))
        picked = rng.sample(chars, way)
        answer = rng.randrange(way)
        support, query = [], None
        for i, c in enumerate(picked):
            files = sorted(c.glob("*.png"))
            one, two = rng.sample(files, 2)
            with Image.open(one) as img:
                support.append((img.convert("L"), LETTERS[i]))
            if i == answer:
                with Image.open(two) as img:
                    query = img.convert("L")
        assert query is not None
        return support, query, LETTERS[answer]

    def predict(self, support: Sequence[tuple[Any, str | None]] | None, query: Any) -> dict[str, Any]:
        """Probability of each support class for the query. Support items are (image or uploaded
        path, label); an item without a label is its own class, named by its position."""
        if not support:
            raise InputError("The support set is empty: pick characters or upload some.")
        if len(support) > 5 * MAX_WAY:
            raise InputError(f"At most {5 * MAX_WAY} support images.")
        images, labels = [], []
        for i, (img, label) in enumerate(support):
            images.append(read_upload(img, "support image").convert("L") if isinstance(img, (str, Path)) else img)
            labels.append(str(label).strip() if label and str(label).strip() else str(i + 1))
        if len(set(labels)) < 2:
            raise InputError("The support set needs at least two different characters.")
        if query is None:
            raise InputError("Give a query: pick characters, upload an image, or draw one.")
        if isinstance(query, (str, Path)):
            query = read_upload(query, "query image")
        pred = self.learner.predict(images, labels, [query])
        probs = [float(p) for p in pred.probs[0]]
        return {"classes": [str(c) for c in pred.classes], "probs": probs, "predicted": str(pred.labels[0])}
