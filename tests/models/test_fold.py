"""h_model.models.fold: BatchNorm folded into the convolution before it, for inference."""
import pytest
import torch
from torch import nn

from h_model.models import create_backbone
from h_model.models.fold import fold_batchnorm


def randomised(net: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so folding has something to fold."""
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_(1, 0.2)
            m.bias.data.normal_(0, 0.2)
    return net.eval()


def test_folding_sface_keeps_its_outputs_and_removes_every_conv_batchnorm():
    net = randomised(create_backbone("sface"))
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        ref = net(x)
        assert fold_batchnorm(net) == 27  # the stem and 13 depthwise + pointwise pairs
        out = net(x)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.features.modules()) == 0
    assert isinstance(net.head[0], nn.BatchNorm2d)  # no convolution before it: kept
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    conv = net.features[1][0]
    assert conv.bias is not None and conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_folding_leaves_a_batchnorm_after_anything_but_a_conv():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1),
                        nn.BatchNorm2d(4, track_running_stats=False)).eval()
    assert fold_batchnorm(net) == 0
    assert [type(m) for m in net] == [nn.Conv2d, nn.ReLU, nn.BatchNorm2d, nn.Conv2d, nn.BatchNorm2d]


def test_folding_refuses_a_model_in_training_mode():
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
