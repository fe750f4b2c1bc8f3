"""Inference-time folding of BatchNorm layers into the convolutions before them.

An eval-mode ``BatchNorm2d`` is a fixed per-channel scale and shift, so ``bn(conv(x))`` equals one
convolution with rescaled weights and a bias. Folding removes a full pass over every feature map
(about a tenth of SFace's time on the CPU) and changes outputs only by float rounding. The folded
model is for inference only: it has no BatchNorm statistics left to train.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batchnorm"]


def fold_batchnorm(model: nn.Module) -> int:
    """Fold, in place, every ``BatchNorm2d`` that directly follows a ``Conv2d`` in an ``nn.Sequential``
    into that convolution (the BatchNorm becomes ``nn.Identity``); returns how many were folded.

    ``model`` must be in eval mode (folding uses the running statistics); a BatchNorm without
    running statistics, or one that follows anything but a plain ``Conv2d``, is left as it is.
    """
    if model.training:
        raise ValueError("fold_batchnorm folds running statistics: call model.eval() first")
    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if type(conv) is not nn.Conv2d or type(bn) is not nn.BatchNorm2d or bn.running_mean is None:
                continue
            fused = fuse_conv_bn_eval(conv, bn)
            if conv.weight.is_contiguous(memory_format=torch.channels_last):
                fused.weight.data = fused.weight.data.contiguous(memory_format=torch.channels_last)
            seq[i], seq[i + 1] = fused, nn.Identity()
            folded += 1
    return folded
