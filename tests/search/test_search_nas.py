"""NAS: weight sharing, the nas_cnn backbone, the exported config, and the search CLI."""
import argparse
import json
from pathlib import Path

import torch
import yaml

from h_model.models import create_model
from h_model.trainer import TrainConfig
from tests.conftest import REPO
from tests.search.helpers import tiny_task

L = {"filters": 24, "kernel_h": 3, "kernel_w": 3, "stride_h": 1, "stride_w": 1}


def test_shared_bank_shares_per_key_and_round_trips():
    from h_model.search.nas import NASEvaluator
    ev = NASEvaluator(tiny_task(), share=True)
    a = ev.bank.build([L, {**L, "filters": 36}])
    b = ev.bank.build([{**L, "stride_h": 2}, {**L, "filters": 36, "kernel_w": 5}])
    assert a.body[0] is b.body[0]            # same (layer, filters, kernel, in-channels): shared
    assert a.body[1] is not b.body[1]        # another kernel width: its own weights
    assert b.body[0][0].stride == (2, 1) and len(ev.bank.layers) == 3
    ev(([L, L]), seed=0)
    st = ev.state_dict()
    ev2 = NASEvaluator(tiny_task(), share=True)
    ev2.load_state_dict(st)
    for k, v in ev.bank.state_dict().items():
        assert torch.equal(v, ev2.bank.state_dict()[k])
    unshared = NASEvaluator(tiny_task(), share=False)
    unshared([L], seed=0)
    assert len(unshared.bank.layers) == 0


def test_nas_cnn_is_a_registered_backbone():
    import h_model.search.nas  # noqa: F401  (registers nas_cnn)
    design = [L, {**L, "filters": 48, "stride_h": 3, "stride_w": 2}]
    model = create_model("proto", "nas_cnn", {"layers": design})
    z = model.embed(torch.zeros(2, 1, 28, 28))
    assert z.shape == (2, 48 * 4)


def test_committed_best_config_builds():
    import h_model.search.nas  # noqa: F401
    cfg = TrainConfig.from_dict(yaml.safe_load((REPO / "training/configs/nas_best_omniglot.yaml").read_text()))
    assert cfg.backbone == "nas_cnn"
    model = create_model(cfg.variant, cfg.backbone, cfg.backbone_kwargs)
    assert model.embed(torch.zeros(3, 1, 28, 28)).shape[0] == 3


def test_run_search_writes_results_with_random_baseline(tmp_path):
    from h_model.search.cli import common_parser, run_search
    from h_model.search.nas import NASEvaluator, NASSpace, rebuild_info
    a = common_parser("t", budget=2, steps=1, out=str(tmp_path)).parse_args(["--compare-random", "--no-progress"])
    task = tiny_task()
    res = run_search(NASSpace(2), lambda: NASEvaluator(task), a, rebuild_info)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["best"]["rebuild"]["backbone"] == "nas_cnn" == res["best"]["rebuild"]["backbone"]
    assert set(saved["runs"]) == {"controller", "random"} and "controller_beats_random" in saved["comparison"]
    assert all((Path(tmp_path) / m / "designs.csv").exists() for m in ("controller", "random"))
    comp = saved["comparison"]
    for m in ("controller", "random"):  # top designs re-scored: 2 designs at most, 3 fresh seeds each
        assert 1 <= len(comp["rescored_top"][m]) <= 2
        assert all(len(e["rewards"]) == 3 and abs(e["mean"] - sum(e["rewards"]) / 3) < 1e-9
                   for e in comp["rescored_top"][m])
        assert comp["best_rescored_mean"][m] == max(e["mean"] for e in comp["rescored_top"][m])
    assert comp["controller_beats_random"] == (comp["best_rescored_mean"]["controller"]
                                               > comp["best_rescored_mean"]["random"])
    assert isinstance(a, argparse.Namespace)


def test_task_rejects_impossible_episodes_up_front():
    import pytest

    from h_model.search.task import ChildConfig, FewShotTask
    from tests.conftest import tiny_imageset
    data = tiny_imageset(classes=4, per_class=4, size=28)
    with pytest.raises(ValueError):
        FewShotTask(data, data, ChildConfig(way=5))


def test_task_trains_every_h_network_variant():
    import pytest

    from h_model.search.task import ChildConfig, FewShotTask, SmallConvNet
    from tests.conftest import tiny_imageset
    data = tiny_imageset(classes=6, per_class=4, size=28)
    cfg = dict(way=3, shot=1, query=2, steps=1, val_way=3, val_shot=1, val_query=2, val_episodes=4)
    for variant in ("proto", "matching", "siamese"):
        task = FewShotTask(data, data, ChildConfig(**cfg, variant=variant))
        acc = task.score(SmallConvNet(hidden=8), seed=0)
        assert 0.0 < acc <= 1.0, variant  # a real accuracy, not the failure reward 0
    with pytest.raises(ValueError, match="unknown H-network variant"):
        FewShotTask(data, data, ChildConfig(**cfg, variant="nope"))


def test_single_search_rescored_with_common_seed(tmp_path, capsys):
    from h_model.search.cli import common_parser, print_summary, run_search
    from h_model.search.nas import NASEvaluator, NASSpace, rebuild_info
    a = common_parser("t", budget=3, steps=1, out=str(tmp_path)).parse_args(
        ["--rescore", "--rescore-top", "2", "--rescore-seeds", "2", "--common-seed", "--no-progress"])
    res = run_search(NASSpace(2), lambda: NASEvaluator(tiny_task()), a, rebuild_info)
    assert set(res["runs"]) == {"controller"} and "comparison" not in res
    assert res["runs"]["controller"]["config"]["common_seed"] is True
    top = res["rescored_top"]["controller"]
    assert len(top) == 2 and all(len(e["rewards"]) == 2 for e in top)
    assert res["best_rescored_mean"]["controller"] == max(e["mean"] for e in top)
    print_summary(res)
    assert "re-scored with fresh seeds, best mean" in capsys.readouterr().out
