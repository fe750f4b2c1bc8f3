"""benchmarks/tune_lake.py and the GPU configs it serves: shifts scaled to the input size."""
import importlib.util

import pytest
import yaml

from h_model.trainer.config import TrainConfig
from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("tune_lake", REPO / "benchmarks" / "tune_lake.py")
tune_lake = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tune_lake)


def test_shifts_scale_with_the_input_size_and_nothing_else_changes():
    c = {"shift": [0.5, 1], "rotate": [5, -5]}
    assert tune_lake.scaled_to(c, 28) is c
    assert tune_lake.scaled_to(c, 84) == {"shift": [1.5, 3.0], "rotate": [5, -5]}
    assert tune_lake.scaled_to(c, 56) == {"shift": [1.0, 2.0], "rotate": [5, -5]}
    assert tune_lake.scaled_to({"rotate": [10, -10]}, 84) == {"rotate": [10, -10]}
    assert c == {"shift": [0.5, 1], "rotate": [5, -5]}  # the candidate list is not modified


@pytest.mark.parametrize("name,size,backbone", [("proto_omniglot_lake_gpu", 84, "conv4"),
                                                ("proto_resnet12_omniglot_lake_gpu", 56, "resnet12")])
def test_lake_gpu_configs_load(name, size, backbone):
    cfg = TrainConfig.from_dict(yaml.safe_load((REPO / "training" / "configs" / f"{name}.yaml").read_text()))
    cfg.validate()
    assert (cfg.image_size, cfg.backbone, cfg.val_way, cfg.device) == (size, backbone, 20, "cuda")
    assert cfg.augment["flip"] == 0.0 and cfg.augment["rotate_deg"] == 10.0
