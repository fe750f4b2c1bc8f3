"""Fine-tuning options of the trainer: a slower (or frozen) backbone, frozen BatchNorm statistics."""
import pytest
import torch

from h_model.models import create_model
from h_model.trainer import TrainConfig, param_groups, set_train_mode


def test_param_groups_scale_the_backbone_only() -> None:
    model = create_model("proto", "conv4", distance="cosine")
    groups = param_groups(model, None, 0.01)
    assert [g["lr_scale"] for g in groups] == [1.0, 0.01]
    assert groups[0]["params"] == [model.log_scale]
    assert len(groups[1]["params"]) == len(list(model.backbone.parameters()))
    assert [g["lr_scale"] for g in param_groups(model, None, 0.0)] == [1.0]  # 0: the backbone is left out
    with pytest.raises(ValueError, match="nothing to train"):
        param_groups(create_model("proto", "conv4"), None, 0.0)  # euclidean head: no parameters
    with pytest.raises(ValueError, match="backbone_lr_scale"):
        TrainConfig(backbone_lr_scale=-1).validate()


def test_freeze_bn_keeps_running_statistics() -> None:
    model = create_model("proto", "conv4", backbone_kwargs={"in_channels": 1})
    bn = model.backbone.layers[0][1]
    before = bn.running_mean.clone()
    x = torch.rand(4, 1, 28, 28)
    set_train_mode(model, freeze_bn=True)
    assert model.training and not bn.training
    model.embed(x)
    assert torch.equal(bn.running_mean, before)
    set_train_mode(model, freeze_bn=False)
    assert bn.training
    model.embed(x)
    assert not torch.equal(bn.running_mean, before)


def test_config_accepts_the_finetune_options() -> None:
    cfg = TrainConfig.from_dict({"backbone": "sface", "backbone_lr_scale": 0.01, "freeze_bn": True})
    cfg.validate()
    assert (cfg.backbone_lr_scale, cfg.freeze_bn) == (0.01, True)
