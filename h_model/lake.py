"""The human-comparison benchmark of Lake et al. (2015): 20 runs of 20-way one-shot
classification within an alphabet, in the official ``all_runs.zip`` format.

Each ``runNN/`` holds ``training/classNN.png`` (one drawing per class), ``test/itemNN.png``
and ``class_labels.txt`` whose lines read ``runNN/test/itemNN.png runNN/training/classNN.png``.

    python -m h_model.evaluate --checkpoint RUN --lake-runs all_runs.zip
    python -m h_model.lake make --omniglot-root DATA/omniglot-py/images_evaluation --out my_runs.zip
"""
from __future__ import annotations

import argparse
import random
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

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


def evaluate_lake_runs(learner, path: str | Path) -> dict:
    """Error (percent) per run and on average, for a :class:`h_model.learner.Learner`."""
    per_run = []
    for run in read_lake_runs(path):
        classes = list(run.train)
        pred = learner.predict([run.train[c] for c in classes], classes, [img for img, _ in run.test])
        wrong = sum(p != truth for p, (_, truth) in zip(pred.labels, run.test))
        per_run.append({"run": run.name, "error": 100.0 * wrong / len(run.test)})
    mean = sum(r["error"] for r in per_run) / len(per_run)
    return {"runs": per_run, "mean_error": mean, "human_error": HUMAN_ERROR, "bpl_error": BPL_ERROR}


def format_lake_table(res: dict) -> str:
    lines = ["| run | error (%) |", "|---|---|"] + [f"| {r['run']} | {r['error']:.1f} |" for r in res["runs"]]
    lines += [f"| **mean** | **{res['mean_error']:.2f}** |", "",
              f"Lake et al. 2015: people {res['human_error']}%, Bayesian Program Learning {res['bpl_error']}%, "
              f"this model {res['mean_error']:.2f}% ({len(res['runs'])} runs)."]
    return "\n".join(lines)


def make_lake_runs(omniglot_root: str | Path, out: str | Path, runs: int = 20, way: int = 20, seed: int = 0) -> Path:
    """Write runs in the official format from an Omniglot ``images_evaluation`` folder.

    Each run: one alphabet with at least ``way`` characters, ``way`` of its characters, two
    different drawers (one for the training drawings, one for the test items).
    """
    root = Path(omniglot_root).expanduser()
    rng = random.Random(seed)
    alphabets = [a for a in sorted(root.iterdir()) if a.is_dir() and len([c for c in a.iterdir() if c.is_dir()]) >= way]
    if not alphabets:
        raise ValueError(f"no alphabet in {root} has {way} characters")
    out = Path(out)
    with zipfile.ZipFile(out, "w") as zf:
        for r in range(1, runs + 1):
            alpha = rng.choice(alphabets)
            chars = rng.sample(sorted(c for c in alpha.iterdir() if c.is_dir()), way)
            d_train, d_test = rng.sample(range(1, 21), 2)
            items = list(range(way))
            rng.shuffle(items)
            run = f"run{r:02d}"
            lines = []
            for j, c in enumerate(chars):
                by_drawer = {int(f.stem.split("_")[1]): f for f in c.glob("*.png")}
                zf.writestr(f"{run}/training/class{j + 1:02d}.png", by_drawer[d_train].read_bytes())
                zf.writestr(f"{run}/test/item{items[j] + 1:02d}.png", by_drawer[d_test].read_bytes())
                lines.append((items[j] + 1, f"{run}/test/item{items[j] + 1:02d}.png {run}/training/class{j + 1:02d}.png"))
            zf.writestr(f"{run}/class_labels.txt", "\n".join(ln for _, ln in sorted(lines)) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m h_model.lake", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="build runs in the official format from Omniglot evaluation alphabets")
    mk.add_argument("--omniglot-root", required=True, help=".../omniglot-py/images_evaluation")
    mk.add_argument("--out", required=True)
    mk.add_argument("--runs", type=int, default=20)
    mk.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    print(make_lake_runs(a.omniglot_root, a.out, a.runs, seed=a.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
