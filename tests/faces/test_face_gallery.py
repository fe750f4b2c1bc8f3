"""Gallery: persistence, index rebuilds, crash safety, threads, model ids, ranking, shared photos."""
from __future__ import annotations

import json
import shutil
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from h_model.faces import Gallery, ModelMismatchError, NoFaceError
from h_model.faces.gallery import INDEX_NAME, DuplicatePhotoError

REPO = Path(__file__).resolve().parents[2]
D = 16


def people(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)


def shots(center: np.ndarray, k: int = 3, seed: int = 0, noise: float = 0.1) -> np.ndarray:
    return (center + noise * np.random.default_rng(seed).normal(size=(k, D))).astype(np.float32)


def filled(path: Path, n: int = 12, **kw) -> tuple[Gallery, np.ndarray]:
    c = people(n)
    g = Gallery(path, model_id="m1", threshold=0.5, **kw)
    for i in range(n):
        g.enroll(f"p{i}", embeddings=shots(c[i], seed=i), model_id="m1")
    return g, c


def test_identify_open_set_and_edits(tmp_path: Path) -> None:
    g, c = filled(tmp_path / "g", candidates=4)
    r = g.identify(shots(c[7], 1, seed=99)[0], k=3)
    assert r.name == "p7" and r.method == "best-photo-cosine" and len(r.matches) == 3
    assert r.matches[0].score >= 0.5 and r.matches[0].similarity == r.matches[0].score
    stranger = people(1, seed=123)[0]
    assert g.identify(stranger).unknown and g.identify(stranger).name is None
    assert g.identify(stranger, threshold=-1.0).name is not None
    assert g.remove("p7") and not g.remove("p7")
    assert g.identify(c[7], k=12).name != "p7" and all(m.name != "p7" for m in g.identify(c[7], k=12).matches)
    g.rename("p3", "ada")
    with pytest.raises(ValueError):
        g.rename("p4", "ada")
    with pytest.raises(KeyError):
        g.rename("nobody", "x")
    assert g.identify(c[3], k=1).name == "ada"
    assert {p.name for p in g.list()} == {f"p{i}" for i in range(12) if i not in (3, 7)} | {"ada"}
    assert all(p.photos == 3 for p in g.list()) and len(g) == 11
    g.close()


def best_cosines(g: Gallery, q: np.ndarray) -> dict[str, float]:
    """Each person's best cosine to ``q``, computed here from the stored embeddings."""
    qn = q / np.linalg.norm(q)
    return {p.name: float(max(e @ qn / np.linalg.norm(e) for e in g.embeddings(p.name))) for p in g.list()}


def test_identify_ranks_by_the_score_it_reports(tmp_path: Path) -> None:
    """The score is the best photo cosine; matches sorted by it; an enrolled embedding scores exactly 1.0
    and wins, even against a person whose mean embedding is nearer (the case a prototype or head got wrong)."""
    rng = np.random.default_rng(5)
    exact = rng.normal(size=D).astype(np.float32)
    near = (exact + 0.3 * rng.normal(size=D)).astype(np.float32)
    g = Gallery(tmp_path / "g", model_id="m1", threshold=0.9, candidates=3)
    # "ada": the query photo itself plus two far-off photos (a poor mean); "bob": three photos all near it
    g.enroll("ada", embeddings=np.stack([exact, -near, rng.normal(size=D).astype(np.float32)]))
    g.enroll("bob", embeddings=shots(near, 3, seed=1, noise=0.05))
    for i, x in enumerate(people(6, seed=9)):
        g.enroll(f"other{i}", embeddings=shots(x, 2, seed=10 + i))
    for candidates in (3, 20):  # the index narrows 8 persons to 3 candidates; or every person is scored
        g.candidates = candidates
        r = g.identify(exact, k=8)
        assert r.name == "ada" and not r.unknown and r.matches[0].score == 1.0
        scores = [m.score for m in r.matches]
        assert scores == sorted(scores, reverse=True) and len(r.matches) == min(candidates, 8)
        truth = best_cosines(g, exact)
        assert all(m.score == pytest.approx(truth[m.name], abs=1e-6) for m in r.matches)
    assert r.matches[1].name == "bob" and r.matches[1].score < 1.0
    q = (exact + 0.02 * rng.normal(size=D)).astype(np.float32)  # a new photo of ada: open set on the same score
    r = g.identify(q, k=2)
    assert r.name == "ada" and r.unknown == (r.matches[0].score < 0.9)
    assert g.identify(q, threshold=r.matches[0].score + 1e-6).unknown
    assert not g.identify(q, threshold=r.matches[0].score).unknown
    g.close()


def test_a_photo_belongs_to_one_person(tmp_path: Path) -> None:
    c = people(3)
    g = Gallery(tmp_path / "g", model_id="m1")
    g.enroll("Ada", embeddings=shots(c[0], 2), sources=["a.jpg", "b.jpg"], sha256s=["aa" * 32, "bb" * 32])
    with pytest.raises(DuplicatePhotoError, match="b.jpg: this photo is already enrolled as 'Ada'"):
        g.enroll("Bob", embeddings=shots(c[1], 2), sources=["c.jpg", "b.jpg"], sha256s=["cc" * 32, "bb" * 32])
    assert [p.name for p in g.list()] == ["Ada"]  # refused whole: nothing of Bob's stored
    r = g.enroll("Bob", embeddings=shots(c[1], 2), sources=["c.jpg", "b.jpg"], sha256s=["cc" * 32, "bb" * 32],
                 skip_failures=True)
    assert (r.added, r.skipped) == (1, [("b.jpg", "this photo is already enrolled as 'Ada'")])
    r = g.enroll("Carol", embeddings=shots(c[2], 1), sources=["a.jpg"], sha256s=["aa" * 32], skip_failures=True)
    assert (r.person_id, r.added) == (-1, 0) and "Carol" not in {p.name for p in g.list()}  # no empty person
    assert g.enroll("Ada", embeddings=shots(c[0], 1), sha256s=["aa" * 32]).duplicates == 1  # same person: a duplicate
    g.close()
    g = Gallery(tmp_path / "g", allow_shared_photos=True)
    assert g.enroll("Carol", embeddings=shots(c[2], 1), sha256s=["aa" * 32]).added == 1
    assert {p.name: p.photos for p in g.list()} == {"Ada": 2, "Bob": 1, "Carol": 1}
    g.close()


def test_persistence_and_index_rebuilds(tmp_path: Path) -> None:
    path = tmp_path / "g"
    g, c = filled(path)
    g.close()
    index = path / INDEX_NAME
    assert index.is_file()
    stamp = index.stat().st_mtime_ns
    g = Gallery(path)  # adopts the stored model id
    assert g.model_id == "m1" and g.identify(c[5], k=1).name == "p5"
    assert index.stat().st_mtime_ns == stamp  # the stored index was valid: no rebuild
    old = index.read_bytes()
    g.enroll("late", embeddings=shots(people(1, seed=7)[0]))
    g.close()
    index.write_bytes(old)  # stale: an index from before the last enrollment
    g = Gallery(path)
    assert g.identify(people(1, seed=7)[0], k=1).name == "late"
    assert g.index.faiss.ntotal == 13 * 3
    g.close()
    index.write_bytes(b"garbage" * 100)  # corrupt
    g = Gallery(path)
    assert g.identify(c[2], k=1).name == "p2"
    g.close()
    index.unlink()  # missing
    g = Gallery(path)
    assert g.identify(c[9], k=1).name == "p9" and index.is_file()
    other = Gallery(path)  # another writer (another process alike): generation bump seen by g
    other.enroll("newcomer", embeddings=shots(people(1, seed=8)[0]))
    assert g.identify(people(1, seed=8)[0], k=1).name == "newcomer"
    other.close()
    g.close()


def test_model_id_and_dimension_are_enforced(tmp_path: Path) -> None:
    g, c = filled(tmp_path / "g", n=3)
    with pytest.raises(ModelMismatchError):
        g.enroll("x", embeddings=c[:1], model_id="m2")
    with pytest.raises(ModelMismatchError):
        g.enroll("x", embeddings=np.ones((1, D + 1), np.float32))
    with pytest.raises(ModelMismatchError, match=r"3 person\(s\) made by face model m1, not by this one \(m2\).*"
                                                 r"enroll-dir PHOTOS --gallery NEW_GALLERY"):
        Gallery(tmp_path / "g", model_id="m2")
    g.export(tmp_path / "m1.json")
    h = Gallery(tmp_path / "h", model_id="m2")
    with pytest.raises(ModelMismatchError):
        h.import_from(tmp_path / "m1.json")
    with pytest.raises(ValueError, match="model_id"):
        Gallery(tmp_path / "new")
    g.close()
    h.close()


@pytest.mark.parametrize("fmt", ["json", "npz"])
def test_export_import_roundtrip(tmp_path: Path, fmt: str) -> None:
    g, _ = filled(tmp_path / "g", n=4)
    g.enroll("p0", embeddings=np.ones((1, D), np.float32), sources=["p0/extra.jpg"], sha256s=["ab" * 32])
    out = g.export(tmp_path / f"gallery.{fmt}")
    if fmt == "npz":
        with np.load(out, allow_pickle=False) as z:
            assert all(z[k].dtype != object for k in z.files)
    h = Gallery(tmp_path / "h", model_id="m1")
    assert h.import_from(out) == {"persons": 4, "added": 13, "duplicates": 0}
    assert h.import_from(out)["duplicates"] == 13  # idempotent
    for p in g.list():
        np.testing.assert_array_equal(h.embeddings(p.name), g.embeddings(p.name))
    row = h.store.con().execute("SELECT source, sha256 FROM embeddings WHERE source IS NOT NULL").fetchone()
    assert row == ("p0/extra.jpg", "ab" * 32)
    g.close()
    h.close()


def test_ivf_index_above_the_exact_limit_supports_removal(tmp_path: Path) -> None:
    g, c = filled(tmp_path / "g", n=40, exact_limit=200, candidates=5, approx="ivf")
    assert g.index_kind == "IndexIDMap"
    for i in range(40, 80):
        g.enroll(f"p{i}", embeddings=shots(people(80)[i], seed=i))  # outgrows exact search
    assert g.index_kind.startswith("IndexIVF") and g.index.faiss.ntotal == 240
    assert g.identify(people(80)[55], k=1).name == "p55"
    g.remove("p55")
    assert g.index.faiss.ntotal == 237 and g.identify(people(80)[55], k=5).name != "p55"
    g.close()
    g = Gallery(tmp_path / "g", exact_limit=200, candidates=5, approx="ivf")
    assert g.index_kind.startswith("IndexIVF") and g.identify(people(80)[60], k=1).name == "p60"
    g.close()


def test_hnsw_index_above_the_exact_limit_removes_by_filtering(tmp_path: Path) -> None:
    path = tmp_path / "g"
    c = people(100)
    g = Gallery(path, model_id="m1", exact_limit=150, candidates=5, max_removed=0.05)
    g.enroll_many({f"p{i}": shots(c[i], seed=i) for i in range(40)})
    assert g.index_kind == "IndexIDMap" and g.index.faiss.ntotal == 120
    g.enroll_many({f"p{i}": shots(c[i], seed=i) for i in range(40, 100)})  # outgrows exact search
    assert g.index_kind == "IndexHNSWFlat" and g.index.faiss.ntotal == 300
    assert all(g.identify(shots(c[i], 1, seed=500 + i)[0], k=1).name == f"p{i}" for i in range(0, 100, 7))
    g.remove("p55")
    assert g.index.faiss.ntotal == 300 and len(g.index.removed) == 3  # still in the graph, filtered out
    assert all(m.name != "p55" for m in g.identify(c[55], k=5).matches)
    g.close()
    index = path / INDEX_NAME
    stamp = index.stat().st_mtime_ns
    g = Gallery(path, exact_limit=150, candidates=5, max_removed=0.05)
    assert g.index_kind == "IndexHNSWFlat" and len(g.index.removed) == 3  # the stored graph and its removals
    assert index.stat().st_mtime_ns == stamp and g.identify(c[55], k=1).name != "p55"
    assert g.identify(c[60], k=1).name == "p60"
    for i in range(56, 62):
        g.remove(f"p{i}")  # more than max_removed of the graph: rebuilt without them
    assert g.index_kind == "IndexHNSWFlat" and g.index.faiss.ntotal == 300 - 21 and not g.index.removed
    assert g.identify(c[70], k=1).name == "p70" and g.identify(c[58], k=1).name != "p58"
    g.close()
    g = Gallery(path, exact_limit=150, candidates=5, approx="ivf")  # other settings: rebuilt to match
    assert g.index_kind == "IndexIVFFlat" and g.identify(c[80], k=1).name == "p80"
    g.close()
    g = Gallery(path, exact_limit=10_000, candidates=5)
    assert g.index_kind == "IndexIDMap" and g.index.faiss.ntotal == 279
    g.close()


def test_enroll_many_matches_enroll(tmp_path: Path) -> None:
    c = people(30)
    bulk = Gallery(tmp_path / "bulk", model_id="m1", threshold=0.5, candidates=4)
    one = Gallery(tmp_path / "one", model_id="m1", threshold=0.5, candidates=4)
    assert bulk.enroll_many({}) == {"persons": 0, "added": 0}
    assert one.index_kind == "empty"
    batch = [(f"p{i}", shots(c[i], seed=i)) for i in range(30)] + [("p3", c[3])]  # a name twice, a 1-D vector
    assert bulk.enroll_many(batch, model_id="m1") == {"persons": 30, "added": 91}
    for name, x in batch:
        one.enroll(name, embeddings=x)
    assert len(bulk) == 30 and [(p.name, p.photos) for p in bulk.list()] == [(p.name, p.photos) for p in one.list()]
    np.testing.assert_array_equal(bulk.embeddings("p3"), one.embeddings("p3"))
    for i in (0, 3, 17, 29):
        q = shots(c[i], 1, seed=900 + i)[0]
        assert bulk.identify(q, k=3).to_dict() == one.identify(q, k=3).to_dict()
    assert bulk.enroll_many({"p0": c[:1] * 2})["added"] == 1 and bulk.embeddings("p0").shape == (4, D)
    assert bulk.index.faiss.ntotal == 92  # added to the live index after the commit
    with pytest.raises(ModelMismatchError):
        bulk.enroll_many({"x": c[:1]}, model_id="m2")
    with pytest.raises(ModelMismatchError):
        bulk.enroll_many({"x": np.ones((1, D + 1), np.float32)})
    with pytest.raises(ValueError):
        bulk.enroll_many({" ": c[:1]})
    assert "x" not in {p.name for p in bulk.list()}  # refused batches leave nothing behind
    bulk.close()
    one.close()
    g = Gallery(tmp_path / "bulk")
    assert g.index.load(g.store.con()) and g.index.faiss.ntotal == 92
    g.close()


def test_concurrent_enroll_and_identify(tmp_path: Path) -> None:
    c = people(44, seed=3)
    g = Gallery(tmp_path / "g", model_id="m1", candidates=6)
    for i in range(4):
        g.enroll(f"seed{i}", embeddings=shots(c[i], seed=i))
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for j in range(10):
                k = 4 + 10 * t + j
                g.enroll(f"w{k}", embeddings=shots(c[k], seed=k))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def reader(t: int) -> None:
        try:
            for j in range(25):
                r = g.identify(shots(c[j % 4], 1, seed=1000 + j)[0], k=1)
                assert r.name == f"seed{j % 4}", r
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)] + \
              [threading.Thread(target=reader, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(g) == 44 and sum(p.photos for p in g.list()) == 132
    for k in (4, 17, 43):
        assert g.identify(c[k], k=1).name == f"w{k}"
    g.close()


CHILD = r"""
import sys
import numpy as np
from h_model.faces.gallery import Gallery
g = Gallery(sys.argv[1], model_id="m1")
rng = np.random.default_rng(0)
i = 0
while True:
    g.enroll(f"p{i}", embeddings=(rng.normal(size=(3, 16)) + i).astype(np.float32),
             sources=[f"p{i}/{j}.jpg" for j in range(3)])
    print(f"committed p{i}", flush=True)
    if i % 7 == 0:
        g.flush()
    i += 1
"""


def test_sigkill_mid_enrollment_loses_nothing_committed(tmp_path: Path) -> None:
    path = tmp_path / "g"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True, env=env,
                         cwd=REPO)
    committed = []
    try:
        for line in p.stdout:  # type: ignore[union-attr]
            committed.append(line.split()[1])
            if len(committed) >= 40:
                break
    finally:
        os.kill(p.pid, signal.SIGKILL)
        rest, _ = p.communicate(timeout=60)
    committed += [ln.split()[1] for ln in rest.splitlines() if ln.startswith("committed")]
    assert len(committed) >= 40 and p.returncode == -signal.SIGKILL
    con = sqlite3.connect(path / "gallery.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    g = Gallery(path)
    listed = {x.name: x.photos for x in g.list()}
    assert set(committed) <= set(listed)  # every acknowledged enrollment survived
    assert set(listed) == {f"p{i}" for i in range(len(listed))}  # nothing out of order
    assert set(listed.values()) == {3}  # no half-enrolled person
    assert g.identify(g.embeddings("p5")[0], k=1).name == "p5"
    assert g.index.faiss.ntotal == 3 * len(listed)
    g.close()
    g = Gallery(path)
    assert g.index.load(g.store.con())  # close() left a whole, current index file
    g.close()


def test_photo_enrollment_and_identify(tmp_path: Path, verifier, faces_root: Path) -> None:
    orl = faces_root / "orl"
    g = Gallery(tmp_path / "g", verifier=verifier, threshold=-1.0)
    r = g.enroll("s1", [orl / "s1" / "1.pgm", orl / "s1" / "2.pgm"])
    assert r.added == 2 and g.enroll("s1", [orl / "s1" / "1.pgm"]).duplicates == 1
    g.enroll("s2", [orl / "s2" / "1.pgm", orl / "s2" / "2.pgm"])
    blank = np.full((100, 100, 3), 100, np.uint8)
    with pytest.raises(NoFaceError):
        g.enroll("s3", [orl / "s3" / "1.pgm", blank])
    assert "s3" not in {p.name for p in g.list()}
    r = g.enroll("s3", [orl / "s3" / "1.pgm", blank], skip_failures=True)
    assert r.added == 1 and len(r.skipped) == 1 and "NoFaceError" in r.skipped[0][1]
    row = g.store.con().execute("SELECT source, sha256, model_id FROM embeddings ORDER BY id").fetchone()
    assert row[0] == "1.pgm" and len(row[1]) == 64 and row[2] == verifier.model_id
    with pytest.raises(DuplicatePhotoError, match="already enrolled as 's1'"):
        g.enroll("s4", [orl / "s1" / "1.pgm"])
    query = orl / "s1" / "3.pgm"
    res = g.identify(query, k=3)
    assert res.method == "best-photo-cosine" and len(res.matches) == 3
    truth = best_cosines(g, verifier.embed([query], normalize=False)[0])
    assert [m.name for m in res.matches] == sorted(truth, key=lambda n: -truth[n])
    assert all(m.score == pytest.approx(truth[m.name], abs=1e-5) for m in res.matches)
    same = g.identify(orl / "s2" / "2.pgm", k=3)  # an enrolled photo: its own person, exactly 1.0
    assert same.matches[0].name == "s2" and same.matches[0].score == 1.0
    assert json.loads(json.dumps(res.to_dict()))["method"] == "best-photo-cosine"
    g.close()


def test_cli_enroll_dir_identify_and_list(tmp_path: Path, face_ckpt: Path, faces_root: Path, capsys) -> None:
    from PIL import Image

    from h_model.faces.__main__ import main as faces_main

    people_dir = tmp_path / "people"
    for person, src in (("alice", "s4"), ("bob", "s5")):
        (people_dir / person).mkdir(parents=True)
        for j in (1, 2):
            shutil.copy(faces_root / "orl" / src / f"{j}.pgm", people_dir / person / f"{j}.pgm")
    Image.new("RGB", (80, 80), (90, 90, 90)).save(people_dir / "bob" / "wall.png")
    (people_dir / "bob" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    gdir = tmp_path / "gallery"
    args = ["--model", str(face_ckpt), "--device", "cpu"]
    assert faces_main(["enroll-dir", str(people_dir), "--gallery", str(gdir), *args]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["persons"] == 2 and out["added"] == 4 and len(out["skipped"]) == 2
    assert {s["file"] for s in out["skipped"]} == {"bob/wall.png", "bob/broken.jpg"}
    assert (gdir / INDEX_NAME).is_file()
    assert faces_main(["identify", str(faces_root / "orl" / "s4" / "3.pgm"), "--gallery", str(gdir), "-k", "2",
                       *args]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["method"] == "best-photo-cosine" and {m["name"] for m in res["matches"]} == {"alice", "bob"}
    assert faces_main(["list", "--gallery", str(gdir)]) == 0
    assert [(p["name"], p["photos"]) for p in json.loads(capsys.readouterr().out)] == [("alice", 2), ("bob", 2)]
