"""Face pairs: the LFW View-2 protocol (pair lists, a generator for any class-folder set, metrics)
and the one pair sampler behind every pair list and calibration set in h_model.

``pairs.txt`` (LFW format): a header ``"<folds> <n>"``, then per fold ``n`` matched lines
``name i j`` followed by ``n`` mismatched lines ``name1 i name2 j``; image ``i`` of ``name`` is
``<root>/<name>/<name>_<i:04d>.jpg``. Data sets with other file names use an index JSON
(written by :func:`make_pairs`) that maps ``name`` -> its files, so ``i`` is the i-th (1-based).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from ..data.folder import list_class_folders
from .scores import calibrate_threshold

__all__ = ["all_pairs_tar_at_far", "Pair", "PairList", "ImageIndex", "read_pairs", "write_pairs", "make_pairs", "sample_folds",
           "label_pairs", "split_names",
           "roc_auc", "roc_curve", "tar_at_far", "best_threshold", "kfold_accuracy", "pair_metrics"]

INDEX_FORMAT = "h_model.faces.pairs-index/1"


@dataclass(frozen=True)
class Pair:
    name1: str
    i1: int
    name2: str
    i2: int

    @property
    def same(self) -> bool:
        return self.name1 == self.name2

    def line(self) -> str:
        return f"{self.name1}\t{self.i1}\t{self.i2}" if self.same else f"{self.name1}\t{self.i1}\t{self.name2}\t{self.i2}"


@dataclass
class PairList:
    folds: int
    per_fold: int
    pairs: list[Pair]

    def fold_of(self) -> np.ndarray:
        """Fold number of each pair (LFW: each fold is ``per_fold`` matched then ``per_fold`` mismatched)."""
        return np.arange(len(self.pairs)) // (2 * self.per_fold)

    def same(self) -> np.ndarray:
        return np.array([p.same for p in self.pairs], dtype=bool)


def read_pairs(path: str | Path) -> PairList:
    """Parse an LFW-style pair list (header ``"10 300"``, or ``"N"`` for one fold)."""
    lines = [ln.split() for ln in Path(path).read_text().splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{path} is empty")
    try:
        head = [int(t) for t in lines[0]]
    except ValueError as e:
        raise ValueError(f"{path}: first line must be '<folds> <pairs per fold>', got {' '.join(lines[0])!r}") from e
    folds, per_fold = (1, head[0]) if len(head) == 1 else (head[0], head[1])
    pairs = []
    for k, t in enumerate(lines[1:], start=2):
        if len(t) == 3:
            pairs.append(Pair(t[0], int(t[1]), t[0], int(t[2])))
        elif len(t) == 4:
            pairs.append(Pair(t[0], int(t[1]), t[2], int(t[3])))
        else:
            raise ValueError(f"{path}:{k}: expected 'name i j' or 'name1 i name2 j', got {' '.join(t)!r}")
    if len(pairs) != 2 * folds * per_fold:
        raise ValueError(f"{path}: header promises {folds} x 2 x {per_fold} pairs, found {len(pairs)}")
    for f in range(folds):
        block = pairs[2 * per_fold * f: 2 * per_fold * (f + 1)]
        if not all(p.same for p in block[:per_fold]) or any(p.same for p in block[per_fold:]):
            raise ValueError(f"{path}: fold {f + 1} must list {per_fold} matched then {per_fold} mismatched pairs")
    return PairList(folds, per_fold, pairs)


def write_pairs(path: str | Path, pl: PairList) -> None:
    from ..checkpoint import atomic_write

    text = f"{pl.folds}\t{pl.per_fold}\n" + "".join(p.line() + "\n" for p in pl.pairs)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


class ImageIndex:
    """(name, i) -> image file: LFW naming under ``root``, or an index JSON's lists (1-based)."""

    def __init__(self, root: str | Path | None = None, images: dict[str, list[str]] | None = None) -> None:
        if root is None and images is None:
            raise ValueError("need an image root or an index")
        self.root = None if root is None else Path(root).expanduser()
        self.images = images

    @classmethod
    def load(cls, path: str | Path, root: str | Path | None = None) -> "ImageIndex":
        obj = json.loads(Path(path).read_text())
        if obj.get("format") != INDEX_FORMAT:
            raise ValueError(f"{path} is not a pair index ({obj.get('format')!r})")
        return cls(root if root is not None else obj.get("root"), obj["images"])

    def save(self, path: str | Path) -> None:
        from ..checkpoint import write_json

        write_json(Path(path), {"format": INDEX_FORMAT, "root": None if self.root is None else str(self.root),
                                "images": self.images})

    def path(self, name: str, i: int) -> Path:
        if self.images is None:
            assert self.root is not None
            return self.root / name / f"{name}_{i:04d}.jpg"
        files = self.images.get(name)
        if files is None or not 1 <= i <= len(files):
            raise KeyError(f"the index has no image {i} of {name!r}")
        p = Path(files[i - 1])
        return p if p.is_absolute() or self.root is None else self.root / p


def split_names(names: Sequence[str], fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """The (train, val, test) identities that :func:`h_model.data.split_classes` picks for a folder
    set with these class names in this order (same seeded permutation), without decoding images."""
    n = len(names)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_train, n_val = int(round(fractions[0] * n)), int(round(fractions[1] * n))
    parts = perm[:n_train], perm[n_train:n_train + n_val], perm[n_train + n_val:]
    return tuple([names[i] for i in sorted(p)] for p in parts)  # type: ignore[return-value]


def make_pairs(roots: str | Path | Sequence[str | Path], folds: int = 10, per_fold: int = 300, seed: int = 0,
               exclude: Iterable[str] = (), only: Iterable[str] | None = None) -> tuple[PairList, ImageIndex]:
    """A View-2 style pair list over class folders, identity-disjoint across folds.

    ``exclude``: identities never used (the training identities); ``only``: restrict to these
    (e.g. the test part of :func:`split_names`). Names are as :func:`list_class_folders` gives
    them (``<dataset>/<class>`` for several roots); whitespace becomes ``_`` in the pair file.
    """
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    paths, labels, names = list_class_folders(roots)
    base = Path(roots[0]).expanduser().resolve() if len(roots) == 1 else None
    files: dict[str, list[str]] = {}
    for p, lab in zip(paths, labels):
        rel = str(p.resolve().relative_to(base)) if base is not None else str(p.resolve())
        files.setdefault("_".join(names[lab].split()), []).append(rel)
    excluded = {"_".join(str(n).split()) for n in exclude}
    allowed = None if only is None else {"_".join(str(n).split()) for n in only}
    eligible = sorted(n for n in files if n not in excluded and (allowed is None or n in allowed))
    pl = sample_folds({n: len(files[n]) for n in eligible}, folds, per_fold=per_fold, seed=seed)
    return pl, ImageIndex(base, files)


# -- sampling ------------------------------------------------------------------------------------
def _draw_matched(rng: np.random.Generator, sizes: Sequence[int], count: int) -> dict[tuple[int, int, int], None]:
    """``count`` distinct ``(group, i, j)``, ``i < j`` 0-based photo indices: a group drawn uniformly
    among ``sizes`` (each at least 2 photos), then two of its photos; in the order drawn."""
    out: dict[tuple[int, int, int], None] = {}
    while len(out) < count:
        g = int(rng.integers(len(sizes)))
        i, j = sorted(rng.choice(sizes[g], 2, replace=False))
        out.setdefault((g, int(i), int(j)))
    return out


def sample_folds(sizes: Mapping[str, int], folds: int = 10, per_fold: int | None = None, pairs: int | None = None,
                 seed: int = 0) -> PairList:
    """View-2 style pairs over identities with ``sizes[name]`` photos each, identity-disjoint across folds.

    The identities (in the given order) are shuffled by ``seed`` and dealt to ``folds`` folds; each
    fold lists ``per_fold`` distinct matched pairs of its identities, then ``per_fold`` distinct
    mismatched ones (photo numbers 1-based). Give ``per_fold`` (a fold that cannot supply that many
    raises ValueError), or ``pairs`` for ``ceil(pairs / (2 folds))`` per fold or as many as the
    smallest fold allows.
    """
    if (per_fold is None) == (pairs is None):
        raise ValueError("give per_fold or pairs")
    names = list(sizes)
    rng = np.random.default_rng(seed)
    order = [names[i] for i in rng.permutation(len(names))]
    groups = [order[f::folds] for f in range(folds)]
    if per_fold is None:
        counts = [[sizes[n] for n in g] for g in groups]
        matched_cap = min(sum(k * (k - 1) // 2 for k in c) for c in counts)
        mismatched_cap = min((sum(c) ** 2 - sum(k * k for k in c)) // 2 for c in counts)
        per_fold = min(math.ceil(pairs / (2 * folds)), matched_cap, mismatched_cap)  # type: ignore[operator]
        if per_fold < 1:
            raise ValueError(f"{len(names)} identities cannot make {folds} folds of pairs")
    out: list[Pair] = []
    for f, ids in enumerate(groups):
        multi = [n for n in ids if sizes[n] >= 2]
        capacity = sum(sizes[n] * (sizes[n] - 1) // 2 for n in multi)
        if capacity < per_fold or len(ids) < 2:
            raise ValueError(f"fold {f + 1}: {len(ids)} identities allow only {capacity} distinct matched pairs, "
                             f"{per_fold} wanted: use fewer folds, a smaller per_fold, or more identities")
        matched = _draw_matched(rng, [sizes[n] for n in multi], per_fold)
        mism: dict[tuple[str, int, str, int], None] = {}
        tries = 0
        while len(mism) < per_fold:
            tries += 1
            if tries > 100 * per_fold:
                raise ValueError(f"fold {f + 1}: cannot draw {per_fold} distinct mismatched pairs")
            a, b = sorted(rng.choice(len(ids), 2, replace=False))
            na, nb = ids[a], ids[b]
            mism.setdefault((na, int(rng.integers(sizes[na])) + 1, nb, int(rng.integers(sizes[nb])) + 1))
        out += [Pair(multi[g], i + 1, multi[g], j + 1) for g, i, j in matched]
        out += [Pair(a, i, b, j) for a, i, b, j in mism]
    return PairList(folds, per_fold, out)


def label_pairs(labels: np.ndarray | torch.Tensor, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to ``n`` distinct matched and ``n`` distinct mismatched index pairs ``(i, j, same)`` of labelled
    samples, by seed (no folds: the pairs a checkpoint's threshold is calibrated on)."""
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)]
    multi = [g for g in groups if len(g) >= 2]
    if not multi or len(groups) < 2:
        raise ValueError("pairs need at least one identity with two photos and two identities")
    capacity = sum(len(g) * (len(g) - 1) // 2 for g in multi)
    drawn = _draw_matched(rng, [len(g) for g in multi], min(n, capacity))
    matched = {(int(multi[g][i]), int(multi[g][j])) for g, i, j in drawn}
    sizes = np.array([len(g) for g in groups])
    mism_capacity = int((sizes.sum() ** 2 - (sizes ** 2).sum()) // 2)
    mism: set[tuple[int, int]] = set()
    while len(mism) < min(n, mism_capacity):
        a, b = rng.integers(len(y), size=2)
        if y[a] != y[b]:
            mism.add((int(min(a, b)), int(max(a, b))))
    pairs = sorted(matched) + sorted(mism)
    i, j = (np.array(v, dtype=np.int64) for v in zip(*pairs))
    return i, j, np.r_[np.ones(len(matched), bool), np.zeros(len(mism), bool)]


# -- metrics -------------------------------------------------------------------------------------
def _as(scores: Sequence[float] | np.ndarray, same: Sequence[bool] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(same, dtype=bool).reshape(-1)
    if s.shape != y.shape or not y.any() or y.all():
        raise ValueError("need as many labels as scores, with both matched and mismatched pairs")
    return s, y


def roc_auc(scores: Sequence[float] | np.ndarray, same: Sequence[bool] | np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    s, y = _as(scores, same)
    uniq, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ranks = (first + (counts + 1) / 2.0)[inv]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(scores: Sequence[float] | np.ndarray, same: Sequence[bool] | np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FAR, TAR, threshold) for every distinct threshold, decisions ``score >= threshold``."""
    s, y = _as(scores, same)
    t = np.unique(s)[::-1]
    gen, imp = np.sort(s[y]), np.sort(s[~y])
    tar = (len(gen) - np.searchsorted(gen, t, "left")) / len(gen)
    far = (len(imp) - np.searchsorted(imp, t, "left")) / len(imp)
    return np.concatenate([[0.0], far]), np.concatenate([[0.0], tar]), np.concatenate([[np.inf], t])


def tar_at_far(scores: Sequence[float] | np.ndarray, same: Sequence[bool] | np.ndarray,
               far: float) -> dict[str, float]:
    """TAR at the threshold :func:`calibrate_threshold` picks for ``far`` (and the FAR reached)."""
    s, y = _as(scores, same)
    t = calibrate_threshold(s, y, far)
    return {"far_target": far, "threshold": t, "tar": float((s[y] >= t).mean()), "far": float((s[~y] >= t).mean()),
            "resolvable": bool(far * (~y).sum() >= 1)}


def all_pairs_tar_at_far(z: np.ndarray, labels: Sequence[int] | np.ndarray,
                         fars: Sequence[float] = (1e-3, 1e-2)) -> dict[str, Any]:
    """TAR at each FAR over every pair of rows of ``z`` (one embedding per image, same label = same
    person), not a sampled pair list: with ``n`` images there are about ``n**2 / 2`` impostor pairs,
    so a FAR of 1e-3 rests on thousands of them instead of one or two (memory grows as ``n**2``)."""
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    if z.ndim != 2 or len(z) != len(y):
        raise ValueError(f"need one label per embedding row, got {z.shape} and {y.shape}")
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    i, j = np.triu_indices(len(z), 1)
    scores = (z @ z.T)[i, j]
    same = y[i] == y[j]
    if not same.any():
        raise ValueError("no two images share a label: there are no genuine pairs")
    return {"genuine_pairs": int(same.sum()), "impostor_pairs": int((~same).sum()),
            "tar_at_far": {f"{f:g}": tar_at_far(scores, same, f) for f in fars}}


def best_threshold(scores: Sequence[float] | np.ndarray, same: Sequence[bool] | np.ndarray) -> float:
    """The accuracy-maximising threshold (midway between neighbouring scores)."""
    s, y = _as(scores, same)
    u = np.unique(s)
    cand = np.concatenate([u, [np.inf]])
    gen, imp = np.sort(s[y]), np.sort(s[~y])
    correct = (len(gen) - np.searchsorted(gen, cand, "left")) + np.searchsorted(imp, cand, "left")
    j = int(np.argmax(correct))
    if j == 0:
        return float(u[0] - 1e-6)
    if j == len(u):
        return float(u[-1] + 1e-6)
    return float((u[j - 1] + u[j]) / 2.0)


def kfold_accuracy(scores: Sequence[float] | np.ndarray, same: Sequence[bool] | np.ndarray,
                   fold: Sequence[int] | np.ndarray) -> tuple[list[float], list[float]]:
    """Per fold: accuracy at the threshold chosen on all the other folds (and that threshold)."""
    s, y = _as(scores, same)
    fold = np.asarray(fold).reshape(-1)
    accs, ths = [], []
    for f in np.unique(fold):
        test = fold == f
        t = best_threshold(s[~test], y[~test])
        accs.append(float(((s[test] >= t) == y[test]).mean()))
        ths.append(t)
    return accs, ths


def pair_metrics(scores: Sequence[float] | np.ndarray, same: Sequence[bool] | np.ndarray,
                 fold: Sequence[int] | np.ndarray, fars: Sequence[float] = (1e-3, 1e-2)) -> dict[str, Any]:
    """10-fold accuracy mean/std (population std, as LFW tables), ROC AUC and TAR at each FAR."""
    accs, ths = kfold_accuracy(scores, same, fold)
    return {"accuracy_mean": float(np.mean(accs)), "accuracy_std": float(np.std(accs)),
            "fold_accuracies": accs, "fold_thresholds": ths, "auc": roc_auc(scores, same),
            "tar_at_far": {f"{f:g}": tar_at_far(scores, same, f) for f in fars}}


def plot_roc(scores: np.ndarray, same: np.ndarray, path: str | Path, title: str = "ROC") -> Path:
    """ROC curve (log FAR axis) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..checkpoint import atomic_write

    far, tar, _ = roc_curve(scores, same)
    floor = 1.0 / max(int((~np.asarray(same, bool)).sum()), 1)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    ax.plot(np.maximum(far, floor / 2), tar, lw=1.5)
    ax.set_xscale("log")
    ax.set_xlim(floor / 2, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(f"{title} (AUC {roc_auc(scores, same):.4f})")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return Path(path)
