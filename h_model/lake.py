"""The human-comparison benchmark of Lake et al. (2015): 20 runs of 20-way one-shot
classification within an alphabet, in the official ``all_runs.zip`` format.

Each ``runNN/`` holds ``training/classNN.png`` (one drawing per class), ``test/itemNN.png``
and ``class_labels.txt`` whose lines read ``runNN/test/itemNN.png runNN/training/classNN.png``.

    python -m h_model.evaluate --checkpoint RUN --lake-runs all_runs.zip
    python -m h_model.lake make --omniglot-root DATA/omniglot-py/images_evaluation --out my_runs.zip
    python -m h_model.lake make --validation --omniglot-root DATA/omniglot-py/images_background --out val_runs.zip
"""
from __future__ import annotations

import argparse
import io
import random
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

from .data.omniglot import ROTATIONS

HUMAN_ERROR, BPL_ERROR = 4.5, 3.3  # percent, Lake et al. 2015


@dataclass
class LakeRun:
    name: str
    train: dict[str, bytes]          # class image path -> PNG bytes
    test: list[tuple[bytes, str]]    # (item PNG bytes, true class image path)


def read_lake_runs(path: str | Path) -> list[LakeRun]:
    """Read every run from ``all_runs.zip`` or its unpacked folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = {p.relative_to(path).as_posix(): p for p in path.rglob("*") if p.is_file()}
        read = lambda name: files[name].read_bytes()  # noqa: E731
        names = list(files)
    elif zipfile.is_zipfile(path):
        zf = zipfile.ZipFile(path)
        names = zf.namelist()
        read = zf.read
    else:
        raise FileNotFoundError(f"{path} is neither a folder nor a zip file of Lake runs")
    runs = []
    for label_file in sorted(n for n in names if n.endswith("class_labels.txt")):
        run_dir = PurePosixPath(label_file).parent
        base = run_dir.parent
        pairs = [ln.split() for ln in read(label_file).decode().splitlines() if ln.strip()]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise ValueError(f"{label_file}: expected lines '<test image> <training image>'")
        full = lambda rel: (base / rel).as_posix() if str(base) != "." else rel  # noqa: E731
        train_names = sorted(n for n in names if n.startswith(f"{run_dir.as_posix()}/training/") and n.endswith(".png"))
        train = {n[len(base.as_posix()) + 1:] if str(base) != "." else n: read(n) for n in train_names}
        test = [(read(full(t)), c) for t, c in pairs]
        missing = {c for _, c in test} - set(train)
        if missing:
            raise ValueError(f"{label_file}: labels name training images that are missing: {sorted(missing)[:3]}")
        runs.append(LakeRun(run_dir.name, train, test))
    if not runs:
        raise ValueError(f"no runNN/class_labels.txt found in {path}")
    return runs


def evaluate_lake_runs(learner, path: str | Path | list[LakeRun]) -> dict:
    """Error (percent) per run and on average, for a :class:`h_model.learner.Learner` (and its
    test-time options); ``path`` may also be runs already read.

    Unless the learner's options already include ``balanced``, the same predictions are also
    scored with the run's test drawings assigned to its classes jointly (``balanced=true``, see
    :mod:`h_model.test_time`) as ``mean_error_balanced``: each official run has exactly one test
    drawing per class, which people and Bayesian Program Learning did not use, so the two figures
    are reported side by side rather than one in place of the other.
    """
    import torch

    from .test_time import balance

    jointly = not learner.test_time.balanced
    per_run = []
    for run in (path if isinstance(path, list) else read_lake_runs(path)):
        classes = list(run.train)
        pred = learner.predict([run.train[c] for c in classes], classes, [img for img, _ in run.test])
        truth = [t for _, t in run.test]
        row = {"run": run.name, "error": 100.0 * sum(p != t for p, t in zip(pred.labels, truth)) / len(truth)}
        if jointly and len(truth) % len(classes) == 0:
            # softmax(log p) = p: balancing the probabilities is balancing the logits
            log_p = torch.from_numpy(pred.probs).clamp_min(1e-30).log()
            labels = [classes[i] for i in balance(log_p[None])[0].argmax(-1).tolist()]
            row["error_balanced"] = 100.0 * sum(p != t for p, t in zip(labels, truth)) / len(truth)
        per_run.append(row)
    res = {"runs": per_run, "mean_error": sum(r["error"] for r in per_run) / len(per_run),
           "human_error": HUMAN_ERROR, "bpl_error": BPL_ERROR}
    if all("error_balanced" in r for r in per_run):
        res["mean_error_balanced"] = sum(r["error_balanced"] for r in per_run) / len(per_run)
    return res


def format_lake_table(res: dict) -> str:
    both = "mean_error_balanced" in res
    if both:
        lines = ["| run | error (%) | balanced (%) |", "|---|---|---|"] \
            + [f"| {r['run']} | {r['error']:.1f} | {r['error_balanced']:.1f} |" for r in res["runs"]] \
            + [f"| **mean** | **{res['mean_error']:.2f}** | **{res['mean_error_balanced']:.2f}** |"]
    else:
        lines = ["| run | error (%) |", "|---|---|"] + [f"| {r['run']} | {r['error']:.1f} |" for r in res["runs"]] \
            + [f"| **mean** | **{res['mean_error']:.2f}** |"]
    lines += ["", f"Lake et al. 2015: people {res['human_error']}%, Bayesian Program Learning {res['bpl_error']}% "
              f"(each drawing judged on its own); this model {res['mean_error']:.2f}% ({len(res['runs'])} runs)"
              + (f", {res['mean_error_balanced']:.2f}% with each run's drawings assigned to its classes jointly "
                 "(balanced=true)." if both else ".")]
    return "\n".join(lines)


def _drawer(f: Path) -> int:
    """The drawer of ``XXXX_DD.png`` (Omniglot's file naming)."""
    try:
        return int(f.stem.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        raise ValueError(f"{f}: expected a drawing named <id>_<drawer>.png") from None


def _alphabets(root: Path, characters: set[str] | None) -> dict[str, list[Path]]:
    """Alphabet name -> its character folders: ``root`` is a folder of alphabets
    (``<alphabet>/<character>/*.png``) or one alphabet (``<character>/*.png``)."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir())
    one = bool(subdirs) and all(any(d.glob("*.png")) for d in subdirs)
    groups = {root.name: subdirs} if one else {a.name: sorted(c for c in a.iterdir() if c.is_dir()) for a in subdirs}
    if characters is not None:
        groups = {a: [c for c in cs if f"{a}/{c.name}" in characters] for a, cs in groups.items()}
    return groups


def make_lake_runs(omniglot_root: str | Path, out: str | Path, runs: int = 20, way: int = 20, seed: int = 0,
                   characters: Sequence[str] | None = None, rotations: Sequence[int] = (0,)) -> Path:
    """Write runs in the official format from a folder of alphabets or a single alphabet folder.

    Each run: one alphabet with at least ``way`` classes, ``way`` of them, two different drawers
    (one for the training drawings, one for the test items). A class is a character, or with
    ``rotations`` a (character, rotation) pair, both drawings rotated alike (counter-clockwise,
    as :meth:`h_model.data.ImageSet.with_rotations`). ``characters`` (``"Alphabet/character"``
    names) restricts the classes, e.g. to the validation characters of the training alphabets.
    """
    root = Path(omniglot_root).expanduser()
    if any(r % 90 for r in rotations) or len(set(rotations)) != len(rotations) or not rotations:
        raise ValueError(f"rotations must be distinct multiples of 90 degrees, got {list(rotations)}")
    groups = _alphabets(root, None if characters is None else set(characters))
    classes = {a: sorted((c, r) for c in cs for r in rotations) for a, cs in groups.items()}
    alphabets = [a for a in sorted(classes) if len(classes[a]) >= way]
    if not alphabets:
        raise ValueError(f"no alphabet in {root} has {way} classes"
                         + ("" if characters is None else f" among the {len(characters)} characters asked for"))
    rng = random.Random(seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w") as zf:
        for r in range(1, runs + 1):
            chosen = rng.sample(classes[rng.choice(alphabets)], way)
            drawings = [{_drawer(f): f for f in c.glob("*.png")} for c, _ in chosen]
            common = sorted(set.intersection(*(set(d) for d in drawings)))
            if len(common) < 2:
                raise ValueError(f"run {r}: the characters chosen share fewer than two drawers")
            d_train, d_test = rng.sample(common, 2)
            items = list(range(way))
            rng.shuffle(items)
            run = f"run{r:02d}"
            lines = []
            for j, ((_, deg), by_drawer) in enumerate(zip(chosen, drawings)):
                zf.writestr(f"{run}/training/class{j + 1:02d}.png", _png(by_drawer[d_train], deg))
                zf.writestr(f"{run}/test/item{items[j] + 1:02d}.png", _png(by_drawer[d_test], deg))
                lines.append((items[j] + 1, f"{run}/test/item{items[j] + 1:02d}.png {run}/training/class{j + 1:02d}.png"))
            zf.writestr(f"{run}/class_labels.txt", "\n".join(ln for _, ln in sorted(lines)) + "\n")
    return out


def _png(f: Path, degrees: int) -> bytes:
    """The file's bytes, or its drawing rotated counter-clockwise, as PNG."""
    if degrees % 360 == 0:
        return f.read_bytes()
    from PIL import Image
    buf = io.BytesIO()
    turn = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
    Image.open(f).transpose(turn[degrees % 360]).save(buf, format="PNG")
    return buf.getvalue()


def make_validation_runs(background_root: str | Path, out: str | Path, runs: int = 20, way: int = 20,
                         seed: int = 0, val_classes: int = 64, split_seed: int = 0,
                         rotations: Sequence[int] = ROTATIONS) -> Path:
    """Runs from the background characters h_model holds out for validation.

    The same characters as :func:`h_model.data.omniglot.split_background` with ``val_classes`` and
    ``split_seed`` (the trainer's defaults: 64 and 0), each with its rotations as classes, as in
    the trainer's validation set: no alphabet keeps 20 held-out characters, so a run's 20 classes
    are (character, rotation) pairs of one alphabet.
    """
    from .data.omniglot import validation_characters
    chars = validation_characters(background_root, val_classes, split_seed)
    return make_lake_runs(background_root, out, runs, way, seed, chars, rotations)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m h_model.lake", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="build runs in the official format from a folder of alphabets (or one alphabet)")
    mk.add_argument("--omniglot-root", required=True,
                    help=".../omniglot-py/images_evaluation, images_background, or one alphabet's folder")
    mk.add_argument("--out", required=True)
    mk.add_argument("--runs", type=int, default=20)
    mk.add_argument("--way", type=int, default=20)
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--rotations", type=int, nargs="+", default=None,
                    help="each (character, rotation) is a class; default 0 (0 90 180 270 with --validation)")
    mk.add_argument("--validation", action="store_true",
                    help="only the background characters held out for validation (--omniglot-root: images_background)")
    mk.add_argument("--val-classes", type=int, default=64, help="with --validation: the trainer's val_classes")
    mk.add_argument("--split-seed", type=int, default=0, help="with --validation: the trainer's data seed")
    a = ap.parse_args(argv)
    try:
        if a.validation:
            out = make_validation_runs(a.omniglot_root, a.out, a.runs, a.way, a.seed, a.val_classes, a.split_seed,
                                       a.rotations or ROTATIONS)
        else:
            out = make_lake_runs(a.omniglot_root, a.out, a.runs, a.way, a.seed, rotations=a.rotations or (0,))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
