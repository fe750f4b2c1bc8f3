"""The pair protocol: file format, generator, metrics with known answers, the evaluator end to end."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from h_model.data import split_classes
from h_model.faces.evaluate_pairs import main as eval_main
from h_model.faces.pairs import (ImageIndex, Pair, PairList, all_pairs_tar_at_far, best_threshold, kfold_accuracy,
                                 make_pairs, pair_metrics, read_pairs, roc_auc, roc_curve, split_names, tar_at_far, write_pairs)
from h_model.faces.verifier import calibrate_threshold
from tests.conftest import tiny_imageset

from tests.faces.face_helpers import make_checkpoint


def test_pair_file_roundtrip_and_validation(tmp_path: Path) -> None:
    pairs = [Pair("a", 1, "a", 2), Pair("a", 1, "b", 1), Pair("c", 1, "c", 3), Pair("c", 2, "d", 1)]
    write_pairs(tmp_path / "p.txt", PairList(2, 1, pairs))
    pl = read_pairs(tmp_path / "p.txt")
    assert (pl.folds, pl.per_fold, pl.pairs) == (2, 1, pairs)
    assert pl.fold_of().tolist() == [0, 0, 1, 1] and pl.same().tolist() == [True, False, True, False]
    (tmp_path / "bad.txt").write_text("2\t1\na\t1\t2\na\t1\tb\t1\n")
    with pytest.raises(ValueError, match="promises"):
        read_pairs(tmp_path / "bad.txt")
    (tmp_path / "order.txt").write_text("1 1\na 1 b 1\na 1 2\n")
    with pytest.raises(ValueError, match="matched then"):
        read_pairs(tmp_path / "order.txt")
    (tmp_path / "junk.txt").write_text("1 1\na 1\na 1 b 1\n")
    with pytest.raises(ValueError, match="expected"):
        read_pairs(tmp_path / "junk.txt")
    assert ImageIndex(tmp_path).path("Ada_Lovelace", 7) == tmp_path / "Ada_Lovelace" / "Ada_Lovelace_0007.jpg"


def test_metrics_known_answers() -> None:
    assert roc_auc([0.9, 0.8, 0.7, 0.6], [True, False, True, False]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5], [True, False]) == pytest.approx(0.5)
    far, tar, _ = roc_curve([0.9, 0.8, 0.7, 0.6], [True, False, True, False])
    assert far.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0] and tar.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert 0.2 < best_threshold([0.8, 0.9, 0.1, 0.2], [True, True, False, False]) < 0.8
    # fold 0 separates at 0.5, fold 1 at 0.4: each fold must be judged by the *other* fold's threshold
    s = [0.8, 0.9, 0.1, 0.2, 0.45, 0.46, 0.35, 0.36]
    y = [True, True, False, False] * 2
    accs, ths = kfold_accuracy(s, y, [0, 0, 0, 0, 1, 1, 1, 1])
    assert accs == [1.0, 0.5] and ths[1] == pytest.approx(0.5) and ths[0] == pytest.approx(0.405)
    m = pair_metrics(s, y, [0, 0, 0, 0, 1, 1, 1, 1])
    assert m["accuracy_mean"] == pytest.approx(0.75) and m["accuracy_std"] == pytest.approx(0.25)
    imp = np.linspace(0.0, 0.5, 1000)
    gen = np.array([0.3, 0.499, 0.6, 0.7])
    r = tar_at_far(np.r_[gen, imp], np.r_[np.ones(4, bool), np.zeros(1000, bool)], 1e-2)
    assert r["far"] == pytest.approx(0.01) and r["tar"] == pytest.approx(0.75) and r["resolvable"]


def test_all_pairs_tar_at_far_known_answers() -> None:
    # rows 0,1 one person (cosine 1.0), rows 2,3 another (cosine 0.6); impostor cosines 0, 0, 0.8, 0.8
    z = np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    r = all_pairs_tar_at_far(z, [0, 0, 1, 1], fars=(0.0, 0.5))
    assert r["genuine_pairs"] == 2 and r["impostor_pairs"] == 4
    assert r["tar_at_far"]["0"]["tar"] == 0.5 and r["tar_at_far"]["0"]["far"] == 0.0
    assert r["tar_at_far"]["0.5"]["tar"] == 1.0 and r["tar_at_far"]["0.5"]["far"] == 0.5
    with pytest.raises(ValueError, match="genuine"):
        all_pairs_tar_at_far(z, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="one label per"):
        all_pairs_tar_at_far(z, [0, 0, 1])


def test_split_names_matches_split_classes() -> None:
    data = tiny_imageset(classes=20, per_class=2)
    parts = split_classes(data, (0.6, 0.2, 0.2), seed=3)
    assert split_names(data.class_names, (0.6, 0.2, 0.2), seed=3) == tuple(list(p.class_names) for p in parts)


def test_generator_is_identity_disjoint(tmp_path: Path) -> None:
    for c in range(30):
        (tmp_path / "ds" / f"id {c:02d}").mkdir(parents=True)
        for j in range(2 + c % 3):
            (tmp_path / "ds" / f"id {c:02d}" / f"{j}.png").write_bytes(b"")
    train = [f"id {c:02d}" for c in range(10)]
    pl, index = make_pairs(tmp_path / "ds", folds=4, per_fold=5, seed=1, exclude=train)
    assert len(pl.pairs) == 40 and len(set(pl.pairs)) == 40
    names_by_fold = [{n for p in pl.pairs[10 * f:10 * f + 10] for n in (p.name1, p.name2)} for f in range(4)]
    assert all(not (a & b) for i, a in enumerate(names_by_fold) for b in names_by_fold[i + 1:])
    used = set().union(*names_by_fold)
    assert not used & {"id_00", "id_05", "id_09"} and all(" " not in n for n in used)
    for p in pl.pairs:
        assert index.path(p.name1, p.i1).is_file() and index.path(p.name2, p.i2).is_file()
        assert p.name1 != p.name2 or p.i1 != p.i2
    write_pairs(tmp_path / "pairs.txt", pl)
    index.save(tmp_path / "index.json")
    assert read_pairs(tmp_path / "pairs.txt").pairs == pl.pairs
    assert ImageIndex.load(tmp_path / "index.json").path("id_12", 2) == index.path("id_12", 2)
    with pytest.raises(ValueError, match="distinct matched pairs"):
        make_pairs(tmp_path / "ds", folds=4, per_fold=50, exclude=train)


def test_generator_on_the_shared_face_sets(faces_root: Path) -> None:
    roots = [faces_root / "orl", faces_root / "yalefaces"]
    pl, index = make_pairs(roots, folds=10, per_fold=20, seed=0, exclude=["orl/s1"])
    assert len(pl.pairs) == 400 and all("orl/s1" not in (p.name1, p.name2) for p in pl.pairs)
    assert all(index.path(p.name2, p.i2).is_file() for p in pl.pairs[:50])


def lfw_tree(root: Path, faces_root: Path) -> None:
    """Six identities, LFW file names; each person's two files are identical copies."""
    for k, name in enumerate("ABCDEF"):
        (root / name).mkdir(parents=True)
        Image.open(faces_root / "orl" / f"s{k + 1}" / "1.pgm").convert("RGB").save(root / name / f"{name}_0001.jpg")
        shutil.copy(root / name / f"{name}_0001.jpg", root / name / f"{name}_0002.jpg")


PAIRS = """2\t3
A\t1\t2
B\t1\t2
C\t1\t2
A\t1\tB\t1
B\t2\tC\t1
A\t2\tC\t2
D\t1\t2
E\t1\t2
F\t1\t2
D\t1\tE\t1
E\t2\tF\t1
D\t2\tF\t1
"""


def test_evaluator_end_to_end_with_known_answers(tmp_path: Path, faces_root: Path, face_ckpt: Path,
                                                 capsys) -> None:
    root = tmp_path / "lfw"
    lfw_tree(root, faces_root)
    (tmp_path / "pairs.txt").write_text(PAIRS)
    out = tmp_path / "report"
    assert eval_main(["--pairs", str(tmp_path / "pairs.txt"), "--root", str(root), "--model", str(face_ckpt),
                      "--device", "cpu", "--out", str(out)]) == 0
    rep = json.loads(capsys.readouterr().out)
    # matched pairs are identical images (cosine 1), mismatched are different people: all separable
    assert rep["pairs"] == rep["pairs_used"] == 12 and rep["no_face"]["images"] == 0
    assert rep["accuracy_mean"] == 1.0 and rep["accuracy_std"] == 0.0 and rep["auc"] == 1.0
    assert rep["tar_at_far"]["0.001"]["tar"] == 1.0 and not rep["tar_at_far"]["0.001"]["resolvable"]
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "scores.tsv").read_text().splitlines()) == 12
    assert json.loads((out / "report.json").read_text())["auc"] == 1.0

    Image.new("RGB", (92, 112), (120, 120, 120)).save(root / "F" / "F_0002.jpg")  # no face in F_0002
    assert eval_main(["--pairs", str(tmp_path / "pairs.txt"), "--root", str(root), "--model", str(face_ckpt),
                      "--device", "cpu", "--out", str(out), "--no-face", "skip"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["no_face"]["images"] == 1 and rep["pairs_dropped"] == 1 and rep["pairs_used"] == 11
    assert rep["no_face"]["examples"] == [str(root / "F" / "F_0002.jpg")]

    ckpt = make_checkpoint(tmp_path / "run", seed=0)
    assert eval_main(["--pairs", str(tmp_path / "pairs.txt"), "--root", str(root), "--model", str(ckpt),
                      "--device", "cpu", "--out", str(out), "--save-threshold", "0.01"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["no_face"]["images"] == 1 and rep["pairs_used"] == 12  # centre-crop fallback kept the pair
    scores = [float(ln.split("\t")[-1]) for ln in (out / "scores.tsv").read_text().splitlines()]
    same = [len(ln.split("\t")) == 4 for ln in (out / "scores.tsv").read_text().splitlines()]
    t = calibrate_threshold(scores, same, 0.01)
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["face"]["threshold"] == pytest.approx(t, abs=1e-6) and cfg["face"]["far"] == 0.01
