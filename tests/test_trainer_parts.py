"""The trainer's parts on tiny in-memory data: config names, run state, run log, the settings check, hooks, teachers."""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from h_model.data import DATASETS, ImageSet
from h_model.distill import TeacherTargets
from h_model.models import create_model
from h_model.trainer import (FinishedRun, PostTrainingHook, RunLog, RunState, TrainConfig, TrainStep, check_settings,
                             read_metrics, train)
from tests.conftest import REPO, tiny_imageset

SIZE = 16  # the smallest square Conv-4 embeds (four 2x poolings)


def tiny_splits(val_classes: int = 3, test_classes: int = 10, **_: Any) -> tuple[ImageSet, ImageSet, ImageSet]:
    """Train 4 classes, validation ``val_classes``, test ``test_classes``; 6 images each."""
    return (tiny_imageset(4, 6, SIZE, seed=1), tiny_imageset(val_classes, 6, SIZE, seed=2),
            tiny_imageset(test_classes, 6, SIZE, seed=3))


if "trainer-parts" not in DATASETS:
    DATASETS.register("trainer-parts")(tiny_splits)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(out: Path, **kw: Any) -> TrainConfig:
    base = dict(dataset="trainer-parts", image_size=SIZE, episodes=4, train_way=2, train_shot=1, train_query=2,
                val_way=2, val_shot=1, val_query=2, val_every=2, val_episodes=5, eval_settings=["2w1s"],
                eval_query=2, eval_episodes=5, log_every=1, checkpoint_every=2, out=str(out))
    return TrainConfig(**{**base, **kw})


# -- config -----------------------------------------------------------------------------------------
def test_old_validation_names_map_to_the_new_ones() -> None:
    old = TrainConfig.from_dict({"test_way": 7, "test_shot": 2, "test_query": 3})
    assert (old.val_way, old.val_shot, old.val_query) == (7, 2, 3)
    assert TrainConfig(test_way=7, test_shot=2, test_query=3) == old
    d = dataclasses.asdict(old)
    assert (d["val_way"], d["val_shot"], d["val_query"]) == (7, 2, 3) and "test_way" not in d
    assert TrainConfig.from_dict(d) == old  # the new names round-trip
    assert TrainConfig().val_way == 5 and TrainConfig().val_query == 15
    # a checkpoint written before the rename (the earlier bundled Omniglot model's "train" entry)
    bundled = json.loads((REPO / "tests/fixtures/train_config_old_names.json").read_text())
    assert "test_way" in bundled
    cfg = TrainConfig.from_dict(bundled)
    assert (cfg.val_way, cfg.val_shot, cfg.val_query) == (bundled["test_way"], bundled["test_shot"],
                                                          bundled["test_query"]) == (5, 1, 15)


def test_both_spellings_of_one_option_are_refused() -> None:
    with pytest.raises(ValueError, match="test_way is the old name of val_way: give one of them, not both"):
        TrainConfig.from_dict({"test_way": 5, "val_way": 5})
    with pytest.raises(ValueError, match="test_query is the old name of val_query"):
        TrainConfig(test_query=5, val_query=6)
    with pytest.raises(ValueError, match="unknown training option\\(s\\): test_ways"):
        TrainConfig.from_dict({"test_ways": 5})


def load_train_h():
    spec = importlib.util.spec_from_file_location("train_h", REPO / "training" / "train_h.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_command_line_takes_both_flag_spellings_and_refuses_a_config_with_both(tmp_path: Path) -> None:
    train_h = load_train_h()
    assert train_h.parse_args(["--val-way", "7", "--val-shot", "2"]).val_way == 7
    assert train_h.parse_args(["--test-way", "8", "--test-shot", "3"]).val_shot == 3
    old = tmp_path / "old.yaml"
    old.write_text("test_way: 3\ntest_query: 4\n")
    cfg = train_h.parse_args(["--config", str(old), "--val-way", "9"])  # a flag overrides the config's old key
    assert (cfg.val_way, cfg.val_query) == (9, 4)
    both = tmp_path / "both.yaml"
    both.write_text("test_way: 3\nval_way: 4\n")
    r = subprocess.run([sys.executable, str(REPO / "training" / "train_h.py"), "--config", str(both)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and "test_way is the old name of val_way" in r.stderr and "Traceback" not in r.stderr


# -- the settings check (before training) -----------------------------------------------------------
def test_validation_setting_is_checked_even_when_it_is_also_a_test_setting(tmp_path: Path) -> None:
    """5-way validation on 3 validation classes fails before training, although the 10 test
    classes fit the same 5w1s test setting (the old code checked that setting on the test set)."""
    out = tmp_path / "run"
    cfg = tiny_config(out, val_way=5, eval_settings=["5w1s"])
    with pytest.raises(ValueError, match="5-way episodes need 5 classes with at least 3 images each; the data has 3"):
        train(cfg)
    assert not out.exists()  # refused before the run wrote anything
    _, val, test = tiny_splits()
    with pytest.raises(ValueError, match="the data has 3"):
        check_settings(cfg, val, test)
    check_settings(dataclasses.replace(cfg, val_way=3), val, test)  # fits both now
    with pytest.raises(ValueError, match="11-way episodes need 11 classes"):
        check_settings(dataclasses.replace(cfg, val_way=3, eval_settings=["5w1s", "11w1s"]), val, test)


# -- run state --------------------------------------------------------------------------------------
def one_step(model, opt) -> None:
    loss = model.embed(torch.rand(4, 1, SIZE, SIZE)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_run_state_saves_and_resumes_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("proto", "conv4", input_shape=(1, SIZE, SIZE))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(5)
    one_step(model, opt)
    torch.rand(3, generator=gen)
    state = RunState(tmp_path, model, opt, gen)
    state.episode, state.best_val, state.elapsed = 12, 0.5, 3.25
    state.save()
    after_gen, after_torch = torch.rand(4, generator=gen), torch.rand(4)

    torch.manual_seed(1)
    model2 = create_model("proto", "conv4", input_shape=(1, SIZE, SIZE))
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-3)
    gen2 = torch.Generator().manual_seed(99)
    fresh = RunState(tmp_path / "elsewhere", model2, opt2, gen2)
    assert fresh.resume() is False and (fresh.episode, fresh.best_val, fresh.elapsed) == (0, -1.0, 0.0)
    again = RunState(tmp_path, model2, opt2, gen2)
    assert again.resume() is True
    assert (again.episode, again.best_val, again.elapsed) == (12, 0.5, 3.25)
    for k, v in model.state_dict().items():
        assert torch.equal(model2.state_dict()[k], v), k
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for i, st in s1["state"].items():
        assert torch.equal(st["exp_avg"], s2["state"][i]["exp_avg"]) and st["step"] == s2["state"][i]["step"]
    assert torch.equal(torch.rand(4, generator=gen2), after_gen)  # the sampler continues where it was
    assert torch.equal(torch.rand(4), after_torch)  # and so does torch's global generator


def test_run_state_keeps_the_best_checkpoint(tmp_path: Path) -> None:
    model = create_model("proto", "conv4", input_shape=(1, SIZE, SIZE))
    state = RunState(tmp_path, model, torch.optim.Adam(model.parameters()), torch.Generator())
    state.episode = 7
    config = {"preprocess": {"size": [SIZE, SIZE], "channels": 1}}
    assert state.keep_if_best(0.25, config) is True and state.best_val == 0.25
    assert json.loads((tmp_path / "config.json").read_text())["episode"] == 7
    state.episode = 9
    assert state.keep_if_best(0.25, config) is False  # not better: the checkpoint stays
    assert state.keep_if_best(math.nan, config) is False
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["val_accuracy"], saved["episode"]) == (0.25, 7)
    assert state.keep_if_best(0.75, config) is True
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["val_accuracy"], saved["episode"], state.best_val) == (0.75, 9, 0.75)


# -- run log and step -------------------------------------------------------------------------------
def test_run_log_rows_hold_the_means_since_the_last_row(tmp_path: Path) -> None:
    runlog = RunLog(tmp_path / "metrics.csv", distill=True)
    runlog.add_step(1.0, 0.5, 0.25)
    runlog.add_step(2.0, 1.0, 0.75)
    row = runlog.train_row(2, 0.001, 1.234)
    assert row == {"episode": 2, "loss": 1.5, "train_acc": 0.75, "val_acc": "", "val_ci95": "", "lr": 0.001,
                   "elapsed_s": 1.23, "distill_loss": 0.5}
    runlog.append(row)
    runlog.add_step(4.0, 0.0, None)
    row = runlog.train_row(3, 0.001, 2.0)
    assert (row["loss"], row["train_acc"], row["distill_loss"]) == (4.0, 0.0, 0.0)
    row.update(val_acc=0.6, val_ci95=0.1)
    runlog.append(row)
    runlog.add_step(1.0, 1.0, None)
    runlog.append(runlog.train_row(4, 0.001, 3.0))
    assert runlog.last_validated() == 3
    runlog.write()
    assert [r["episode"] for r in read_metrics(tmp_path / "metrics.csv", 3)] == ["2", "3"]
    with open(tmp_path / "metrics.csv") as f:
        assert [r["val_acc"] for r in csv.DictReader(f)] == ["", "0.6", ""]
    assert RunLog(tmp_path / "m.csv").last_validated() is None


def test_train_step_schedule_and_update(tmp_path: Path) -> None:
    from h_model.trainer import EpisodeLoss, param_groups
    from h_model.episodes import EpisodeSampler

    cfg = tiny_config(tmp_path, lr=0.01, lr_schedule="cosine", episodes=10, backbone_lr_scale=0.5)
    model = create_model("proto", "conv4", input_shape=(1, SIZE, SIZE), distance="cosine")
    opt = torch.optim.Adam(param_groups(model, None, cfg.backbone_lr_scale), lr=cfg.lr)
    train_set = tiny_splits()[0]
    step = TrainStep(cfg, model, EpisodeLoss(model), opt, torch.device("cpu"), train_set.preprocess)
    step.set_lr(5, 0.0)  # half way through a cosine schedule: half the rate
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.005, 0.0025]) and step.lr == pytest.approx(0.005)
    before = model.log_scale.detach().clone()
    model.eval()
    loss, acc, dloss = step(EpisodeSampler(train_set, 2, 1, 2, seed=0).sample())
    assert model.training and math.isfinite(loss) and acc in (0.0, 0.25, 0.5, 0.75, 1.0) and dloss is None
    assert not torch.equal(model.log_scale.detach(), before)


def test_both_ways_loss_is_the_mean_of_the_episode_and_its_swap() -> None:
    import torch.nn.functional as F

    from h_model.trainer import EpisodeLoss

    torch.manual_seed(0)
    model = create_model("proto", "conv4", input_shape=(1, SIZE, SIZE)).eval()
    sx, qx = torch.randn(3, 1, SIZE, SIZE), torch.randn(6, 1, SIZE, SIZE)
    sy, qy = torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1, 1, 2, 2])   # 3-way 1-shot 2-query
    loss, logits = EpisodeLoss(model, both_ways=True)(sx, sy, qx, qy, 3)[:2]
    forward = model(sx, sy, qx, 3)       # the queries by the support prototypes
    swapped = model(qx, qy, sx, 3)       # the support images by the queries' (2-shot) prototypes
    want = (F.cross_entropy(forward, qy) + F.cross_entropy(swapped, sy)) / 2
    # the swap shares one BatchNorm batch, so in eval mode its logits equal two separate calls
    assert torch.allclose(logits, forward, atol=1e-5) and torch.allclose(loss, want, atol=1e-5)
    assert TrainConfig.from_dict({"both_ways": True}).both_ways
    siamese = create_model("siamese", "conv4", input_shape=(1, SIZE, SIZE))
    assert model.trains_both_ways and not siamese.trains_both_ways
    with pytest.raises(ValueError, match="own episode loss"):
        EpisodeLoss(siamese, both_ways=True)


# -- a whole tiny run: hooks, caller-supplied teacher ------------------------------------------------
class Probe(PostTrainingHook):
    """Records what it was given and reports a figure computed from it."""

    key = "probe"

    def __init__(self) -> None:
        self.runs: list[FinishedRun] = []

    def __call__(self, run: FinishedRun) -> dict[str, Any]:
        self.runs.append(run)
        return {"test_images": len(run.test_set), "results_so_far": sorted(run.results)}

    def summary(self, result: dict[str, Any]) -> str:
        return f"probe saw {result['test_images']} test images"


def test_post_training_hook_runs_once_after_the_test_evaluation(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    probe = Probe()
    results = train(tiny_config(out), hooks=[probe])
    assert len(probe.runs) == 1
    run = probe.runs[0]
    assert run.out == out and run.cfg.out == str(out) and not run.model.training
    assert len(run.val_set) == 18 and len(run.test_set) == 60
    assert run.test_embeddings.shape == (60, 64)
    assert results["probe"] == {"test_images": 60, "results_so_far": ["2w1s", "train"]}
    assert json.loads((out / "results.json").read_text())["probe"] == results["probe"]
    assert "probe saw 60 test images" in capsys.readouterr().out
    assert results["train"]["episodes"] == 4
    with pytest.raises(ValueError, match="distinct, non-empty results keys"):
        train(tiny_config(tmp_path / "twice"), hooks=[Probe(), Probe()])
    assert not (tmp_path / "twice").exists()


def test_teacher_targets_come_from_the_caller(tmp_path: Path) -> None:
    z = torch.arange(24 * 4, dtype=torch.float64).reshape(24, 4)
    t = TeacherTargets("fixed-v1", z)
    assert t.dim == 4 and t.embeddings.dtype == torch.float32
    picked = t.of_episode(torch.tensor([[3, 0]]), torch.tensor([[5]]))
    assert torch.equal(picked, z.float()[[3, 0, 5]][None])
    with pytest.raises(ValueError, match="must be \\[N, D\\]"):
        TeacherTargets("bad", torch.zeros(3))
    with pytest.raises(ValueError, match="names teacher 'dlib': give train\\(\\) its targets"):
        train(tiny_config(tmp_path / "no", teacher="dlib"))
    assert not (tmp_path / "no").exists()

    seen: list[int] = []

    def teacher(train_set: ImageSet) -> TeacherTargets:
        seen.append(len(train_set))
        return TeacherTargets("fixed-v1", torch.randn(len(train_set), 8, generator=torch.Generator().manual_seed(0)))

    out = tmp_path / "run"
    train(tiny_config(out, teacher="fixed"), teacher=teacher)
    assert seen == [24]
    config = json.loads((out / "config.json").read_text())
    assert config["distill"] == {"teacher": "fixed-v1", "embed": 1.0, "relation": 1.0}
    with open(out / "metrics.csv") as f:
        d = [r["distill_loss"] for r in csv.DictReader(f) if r["loss"]]
    assert len(d) == 4 and all(float(x) > 0 for x in d)


def test_the_trainer_does_not_import_the_face_library() -> None:
    code = ("import sys, h_model.trainer, h_model.trainer.loop; "
            "print(sorted(m for m in sys.modules if m.startswith('h_model.faces')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
