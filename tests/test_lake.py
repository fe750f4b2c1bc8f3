"""Lake et al. run builder (any alphabet folder, validation characters) and the test-time options."""
import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import h_model
from h_model.checkpoint import save_checkpoint
from h_model.data.omniglot import load_omniglot_split, omniglot_preprocess, split_background, validation_characters
from h_model.evaluate import evaluate, main as evaluate_main
from h_model.lake import evaluate_lake_runs, format_lake_table, make_lake_runs, make_validation_runs, read_lake_runs
from h_model.models import create_model
from h_model.preprocess import Preprocess
from h_model.test_time import TestTime, balance, parse_test_time, tt_head, tta_embed

from tests.conftest import tiny_imageset

DRAWERS = (1, 2, 3)


def _drawing(rng: np.random.Generator) -> np.ndarray:
    a = np.full((20, 20), 255, np.uint8)
    r, c = rng.integers(0, 14, 2)
    a[r:r + 6, c:c + 2] = 0
    a[r:r + 2, c:c + 6] = 0
    a[rng.integers(0, 20), rng.integers(0, 20)] = 0  # every file unique
    return a


@pytest.fixture
def alphabets(tmp_path):
    """``root/<alphabet>/characterNN/<id>_<drawer>.png``: alphabets of 6, 5 and 2 characters."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images_background"
    source = {}  # file bytes -> (alphabet, character, drawer)
    for alpha, n in (("Alpha", 6), ("Beta", 5), ("Gamma", 2)):
        for c in range(1, n + 1):
            d = root / alpha / f"character{c:02d}"
            d.mkdir(parents=True)
            for k in DRAWERS:
                f = d / f"{c:04d}_{k:02d}.png"
                Image.fromarray(_drawing(rng)).save(f)
                source[f.read_bytes()] = (alpha, f"character{c:02d}", k)
    return root, source


def _check_official(path, runs, way):
    names = zipfile.ZipFile(path).namelist()
    for r in range(1, runs + 1):
        assert f"run{r:02d}/class_labels.txt" in names
        assert sorted(n for n in names if n.startswith(f"run{r:02d}/training/")) == \
            [f"run{r:02d}/training/class{j:02d}.png" for j in range(1, way + 1)]
        assert sorted(n for n in names if n.startswith(f"run{r:02d}/test/")) == \
            [f"run{r:02d}/test/item{j:02d}.png" for j in range(1, way + 1)]
        lines = zipfile.ZipFile(path).read(f"run{r:02d}/class_labels.txt").decode().splitlines()
        assert [ln.split()[0] for ln in lines] == [f"run{r:02d}/test/item{j:02d}.png" for j in range(1, way + 1)]
        assert sorted(ln.split()[1] for ln in lines) == [f"run{r:02d}/training/class{j:02d}.png" for j in range(1, way + 1)]


def test_runs_from_a_folder_of_alphabets(alphabets, tmp_path):
    root, source = alphabets
    z = make_lake_runs(root, tmp_path / "r.zip", runs=6, way=5, seed=3)
    _check_official(z, 6, 5)
    for run in read_lake_runs(z):
        train = {c: source[b] for c, b in run.train.items()}
        assert len({a for a, _, _ in train.values()}) == 1       # one alphabet (never Gamma: 2 characters)
        assert len({ch for _, ch, _ in train.values()}) == 5    # five different characters
        assert len({k for _, _, k in train.values()}) == 1      # one drawer for the training drawings
        tests = [(source[b], source[run.train[c]]) for b, c in run.test]
        assert len({t[2] for t, _ in tests}) == 1 and tests[0][0][2] != tests[0][1][2]  # another drawer
        assert all(t[:2] == c[:2] for t, c in tests)             # each item is its class's character
    assert zipfile.ZipFile(z).read("run01/class_labels.txt") == \
        zipfile.ZipFile(make_lake_runs(root, tmp_path / "again.zip", runs=6, way=5, seed=3)).read("run01/class_labels.txt")


def test_runs_from_one_alphabet_folder_and_errors(alphabets, tmp_path):
    root, source = alphabets
    z = make_lake_runs(root / "Alpha", tmp_path / "a.zip", runs=2, way=6)
    _check_official(z, 2, 6)
    assert {source[b][0] for r in read_lake_runs(z) for b in r.train.values()} == {"Alpha"}
    with pytest.raises(ValueError, match="no alphabet .* has 7 classes"):
        make_lake_runs(root, tmp_path / "b.zip", way=7)
    with pytest.raises(ValueError, match="multiples of 90"):
        make_lake_runs(root, tmp_path / "b.zip", way=5, rotations=(0, 45))
    assert evaluate_main(["--checkpoint", str(tmp_path / "none"), "--lake-runs", str(z)]) == 2


def test_rotations_are_classes_rotated_alike(alphabets, tmp_path):
    root, source = alphabets
    z = make_lake_runs(root / "Gamma", tmp_path / "g.zip", runs=3, way=8, rotations=(0, 90, 180, 270))
    _check_official(z, 3, 8)
    originals = {v: np.array(Image.open(io.BytesIO(b))) for b, v in source.items()}
    for run in read_lake_runs(z):
        for item, cls in run.test:
            a, b = (np.array(Image.open(io.BytesIO(x))) for x in (item, run.train[cls]))
            ka = [k for k in range(4) for key, o in originals.items() if np.array_equal(np.rot90(o, k), a)]
            kb = [k for k in range(4) for key, o in originals.items() if np.array_equal(np.rot90(o, k), b)]
            assert len(ka) == len(kb) == 1 and ka == kb           # same rotation for item and class drawing


def test_validation_runs_use_exactly_the_held_out_characters(alphabets, tmp_path):
    root, _ = alphabets
    chars = validation_characters(root, val_classes=5, seed=0)
    bg = load_omniglot_split(root.parent, "background", omniglot_preprocess(), cache_dir=None, download=False)
    _, val = split_background(bg, 5, 0)
    assert {n.split("@")[0] for n in val.class_names} == set(chars) and len(chars) == 5
    alpha = max({c.split("/")[0] for c in chars}, key=lambda a: sum(c.startswith(a + "/") for c in chars))
    k = sum(c.startswith(alpha + "/") for c in chars)
    z = make_validation_runs(root, tmp_path / "v.zip", runs=4, way=4 * k, val_classes=5)
    _check_official(z, 4, 4 * k)
    src = {(p.read_bytes()): f"{p.parent.parent.name}/{p.parent.name}" for p in root.glob("*/*/*.png")}
    used = set()
    for run in read_lake_runs(z):
        for b in run.train.values():
            used.add(src.get(b))
    used.discard(None)  # rotated drawings are new files
    assert used <= set(chars)
    with pytest.raises(ValueError, match="among the 5 characters"):
        make_validation_runs(root, tmp_path / "w.zip", way=4 * k + 1, val_classes=5)


# ---------------------------------------------------------------- test-time options

OPTIONS = [{"shift": [1]}, {"scale": [0.9, 1.1]}, {"rotate": [10, -10]}, {"center": True}, {"l2": True},
           {"transductive_steps": 2, "transductive_temperature": 100.0}, {"balanced": True}]


@pytest.fixture
def episode():
    torch.manual_seed(0)
    model = create_model("proto", "conv4").eval()
    x = torch.rand(9, 1, 28, 28)
    return model, x[:3], torch.tensor([0, 1, 2]), x[3:]


def _logits(model, tt, sx, sy, qx):
    with torch.no_grad():
        return tt_head(model, tt, tta_embed(model, sx, tt)[None], sy[None], tta_embed(model, qx, tt)[None], 3)[0]


def test_default_is_the_model_itself(episode):
    model, sx, sy, qx = episode
    with torch.no_grad():
        assert torch.equal(_logits(model, TestTime(), sx, sy, qx), model(sx, sy, qx))
    assert TestTime().is_default and TestTime().to_dict() == {} and not TestTime().augments


@pytest.mark.parametrize("opt", OPTIONS, ids=lambda o: ",".join(o))
def test_each_option_changes_logits_deterministically(episode, opt):
    model, sx, sy, qx = episode
    tt = TestTime.from_dict(opt)
    a, b = _logits(model, tt, sx, sy, qx), _logits(model, tt, sx, sy, qx)
    assert a.shape == (6, 3) and torch.equal(a, b)
    assert not torch.allclose(a, _logits(model, TestTime(), sx, sy, qx))
    assert TestTime.from_dict(tt.to_dict()) == tt


def test_warp_identity_and_shift_is_exact():
    from h_model.test_time import _warp
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(_warp(x, 0, 0, 1, 0), x, atol=1e-6)
    assert torch.allclose(_warp(x, 1, 0, 1, 0)[..., 1:], x[..., :-1], atol=1e-5)  # one pixel to the right


def test_parse_and_bad_options():
    tt = parse_test_time(["rotate=10,-10", "l2=true"], {"shift": [1]})
    assert tt == TestTime(shift=(1,), rotate=(10, -10), l2=True)
    assert parse_test_time(["none", "center=1"], {"shift": [1]}) == TestTime(center=True)
    for bad in (["shift"], ["colour=1"], ["l2=maybe"]):
        with pytest.raises(ValueError):
            parse_test_time(bad)
    with pytest.raises(ValueError, match="scale"):
        TestTime(scale=(0.0,))
    with pytest.raises(ValueError, match="Prototypical"):
        m = create_model("matching", "conv4").eval()
        tt_head(m, TestTime(transductive_steps=1), torch.rand(1, 3, 64), torch.tensor([[0, 1, 2]]), torch.rand(1, 2, 64), 3)


def test_balance_assigns_queries_equally():
    # queries 0 and 1 both prefer class 0, but query 1 less strongly; query 2 prefers class 1
    logits = torch.tensor([[[5.0, 0.0, 0.0], [4.0, 3.0, 0.0], [0.0, 6.0, 5.5]]])
    assert logits.argmax(-1).tolist() == [[0, 0, 1]]
    p = balance(logits).exp()
    assert p.argmax(-1).tolist() == [[0, 1, 2]]
    assert torch.allclose(p.sum(-1), torch.ones(1, 3), atol=1e-5)
    assert torch.allclose(p.sum(-2), torch.ones(1, 3), atol=1e-3)
    two = balance(torch.randn(2, 6, 3)).exp()  # two queries per class, batched
    assert torch.allclose(two.sum(-2), torch.full((2, 3), 2.0), atol=1e-3)
    with pytest.raises(ValueError, match="5 queries cannot fall equally into 3 classes"):
        balance(torch.randn(1, 5, 3))


def _checkpoint(path, test_time=None):
    torch.manual_seed(0)
    model = create_model("proto", "conv4").eval()
    cfg = {"preprocess": Preprocess(size=(28, 28), channels=1, invert=True).to_dict()}
    if test_time is not None:
        cfg["test_time"] = test_time
    save_checkpoint(path, model, cfg)
    return path


def test_learner_honours_the_config_entry(alphabets, tmp_path):
    root, _ = alphabets
    run = read_lake_runs(make_lake_runs(root, tmp_path / "r.zip", runs=1, way=5))[0]
    support, labels, queries = list(run.train.values()), list(run.train), [b for b, _ in run.test]
    plain = h_model.load(_checkpoint(tmp_path / "plain"), "cpu")
    opt = {"shift": [1], "transductive_steps": 1}
    tuned = h_model.load(_checkpoint(tmp_path / "tuned", opt), "cpu")
    assert tuned.test_time == TestTime.from_dict(opt) and plain.test_time.is_default
    p0, p1 = plain.predict(support, labels, queries), tuned.predict(support, labels, queries)
    assert p1.probs.shape == p0.probs.shape == (5, 5) and not np.allclose(p0.probs, p1.probs)
    with torch.no_grad():  # no options: exactly the model's own prediction
        ref = torch.softmax(plain.model(plain.tensors(support), torch.arange(5), plain.tensors(queries)), -1)
    assert np.array_equal(p0.probs, ref.numpy())
    plain.test_time = TestTime.from_dict(opt)
    assert np.array_equal(plain.predict(support, labels, queries).probs, p1.probs)
    res = evaluate_lake_runs(tuned, [run])
    assert len(res["runs"]) == 1 and 0 <= res["mean_error"] <= 100
    # balanced: one query per class, so every class receives one query's worth of probability
    pb = plain.predict(support, labels, queries, balanced=True)
    assert np.allclose(pb.probs.sum(0), 1.0, atol=1e-3) and np.allclose(pb.probs.sum(1), 1.0, atol=1e-5)
    assert plain.test_time == TestTime.from_dict(opt)  # the call's choice is not kept
    with pytest.raises(ValueError, match="cannot fall equally"):
        plain.predict(support, labels, queries[:4], balanced=True)


def test_evaluate_honours_the_config_entry(alphabets, tmp_path):
    root, _ = alphabets
    z = make_lake_runs(root, tmp_path / "r.zip", runs=2, way=5)
    ck = _checkpoint(tmp_path / "ck", {"rotate": [10, -10]})
    for extra, expect in (([], {"rotate": [10.0, -10.0]}), (["--test-time", "none"], {}),
                          (["--test-time", "l2=true"], {"rotate": [10.0, -10.0], "l2": True})):
        out = tmp_path / "lake.json"
        assert evaluate_main(["--checkpoint", str(ck), "--lake-runs", str(z), "--json", str(out), *extra]) == 0
        res = json.loads(out.read_text())
        assert res["test_time"] == expect
        learner = h_model.load(ck, "cpu")
        learner.test_time = TestTime.from_dict(expect)
        assert res["mean_error"] == evaluate_lake_runs(learner, z)["mean_error"]
    assert evaluate_main(["--checkpoint", str(ck), "--lake-runs", str(z), "--test-time", "bogus=1"]) == 2


def test_lake_evaluation_reports_the_balanced_figure_beside(alphabets, tmp_path):
    root, _ = alphabets
    runs = read_lake_runs(make_lake_runs(root, tmp_path / "r.zip", runs=3, way=5))
    learner = h_model.load(_checkpoint(tmp_path / "ck"), "cpu")
    res = evaluate_lake_runs(learner, runs)
    learner.test_time = TestTime(balanced=True)
    joint = evaluate_lake_runs(learner, runs)
    assert "mean_error_balanced" not in joint  # already the balanced figure
    assert [r["error_balanced"] for r in res["runs"]] == [r["error"] for r in joint["runs"]]
    assert res["mean_error_balanced"] == joint["mean_error"]
    table = format_lake_table(res)
    assert "| balanced (%) |" in table and f"{res['mean_error_balanced']:.2f}% with each run" in table
    assert "| balanced (%) |" not in format_lake_table(joint)


def test_episode_evaluation_with_options():
    torch.manual_seed(0)
    model = create_model("proto", "conv4").eval()
    data = tiny_imageset(classes=6, per_class=4, size=28)
    base = evaluate(model, data, 3, 1, query=2, episodes=20, seed=5)
    assert evaluate(model, data, 3, 1, query=2, episodes=20, seed=5, test_time=TestTime()) == base
    tt = TestTime(shift=(1,), transductive_steps=2, transductive_temperature=100.0)
    a = evaluate(model, data, 3, 1, query=2, episodes=20, seed=5, test_time=tt)
    assert a == evaluate(model, data, 3, 1, query=2, episodes=20, seed=5, test_time=tt)
    maml = create_model("maml", "conv4", input_shape=(1, 28, 28)).eval()
    with pytest.raises(ValueError, match="embeds images independently"):
        evaluate(maml, data, 3, 1, query=2, episodes=2, test_time=tt)
