"""Neural architecture search (Zoph & Le 2017) with optional ENAS weight sharing (Pham et al. 2018).

The controller designs a CNN layer by layer: number of filters, kernel height, kernel width,
stride height, stride width. Each design is the backbone of a Prototypical network trained
briefly on Omniglot episodes; its validation accuracy is the reward. Importing this module
registers the ``nas_cnn`` backbone, so a found design trains from scratch with

    python training/train_h.py --config training/configs/nas_best_omniglot.yaml
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import nn

from ..models.backbones import BACKBONES
from .reinforce import ChoiceSpace

if TYPE_CHECKING:  # the task imports the evaluator, which `python -m h_model.evaluate` must import first
    from .task import FewShotTask

FILTERS = (24, 36, 48, 64)
KERNELS = (1, 3, 5, 7)
STRIDES = (1, 2, 3)
FIELDS = ("filters", "kernel_h", "kernel_w", "stride_h", "stride_w")


class NASSpace(ChoiceSpace):
    """``layers`` x (filters, kernel height, kernel width, stride height, stride width)."""

    def __init__(self, layers: int = 3, filters: Sequence[int] = FILTERS, kernels: Sequence[int] = KERNELS,
                 strides: Sequence[int] = STRIDES) -> None:
        self.layers = layers
        options = {"filters": filters, "kernel_h": kernels, "kernel_w": kernels, "stride_h": strides, "stride_w": strides}
        super().__init__([(f"layer{i}.{f}", options[f]) for i in range(layers) for f in FIELDS])

    def decode(self, actions: Sequence[int]) -> list[dict[str, int]]:
        flat = super().decode(actions)
        return [{f: int(flat[f"layer{i}.{f}"]) for f in FIELDS} for i in range(self.layers)]


def layer_key(index: int, layer: dict[str, int], cin: int) -> str:
    """The weight-sharing key: strides change no parameter shape, so they share weights."""
    return f"l{index}_f{layer['filters']}_k{layer['kernel_h']}x{layer['kernel_w']}_c{cin}"


def make_layer(layer: dict[str, int], cin: int) -> nn.Sequential:
    """conv (same padding, the layer's strides) -> BatchNorm; the ReLU is applied by NASCNN."""
    kh, kw = layer["kernel_h"], layer["kernel_w"]
    return nn.Sequential(nn.Conv2d(cin, layer["filters"], (kh, kw), (layer["stride_h"], layer["stride_w"]),
                                   padding=(kh // 2, kw // 2), bias=False), nn.BatchNorm2d(layer["filters"]))


class NASCNN(nn.Module):
    """A designed CNN: [conv -> BN -> ReLU] per layer, then average pooling to ``pool x pool``."""

    def __init__(self, layers: Sequence[dict[str, int]], in_channels: int = 1, pool: int = 2,
                 modules: Sequence[nn.Module] | None = None) -> None:
        super().__init__()
        if not layers:
            raise ValueError("a nas_cnn needs at least one layer")
        self.design = [{f: int(layer[f]) for f in FIELDS} for layer in layers]
        if modules is None:
            chans = [in_channels] + [layer["filters"] for layer in self.design]
            modules = [make_layer(layer, c) for layer, c in zip(self.design, chans)]
        self.body = nn.ModuleList(modules)
        self.pool = nn.AdaptiveAvgPool2d(pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.body:
            x = torch.relu(m(x))
        return self.pool(x).flatten(1)


def nas_cnn(layers: Sequence[dict[str, int]], in_channels: int = 1, pool: int = 2) -> nn.Module:
    """Backbone factory: ``layers`` is the search's design (a list of layer dicts)."""
    return NASCNN(layers, in_channels, pool)


if "nas_cnn" not in BACKBONES:
    BACKBONES.register("nas_cnn")(nas_cnn)


class SharedBank(nn.Module):
    """One parameter set per (layer, filters, kernel height, kernel width, in-channels) key."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleDict()

    def get(self, index: int, layer: dict[str, int], cin: int) -> nn.Module:
        key = layer_key(index, layer, cin)
        if key not in self.layers:
            self.layers[key] = make_layer({**layer, "stride_h": 1, "stride_w": 1}, cin)
        conv = self.layers[key][0]
        conv.stride = (layer["stride_h"], layer["stride_w"])  # strides are free to change per child
        return self.layers[key]

    def build(self, design: Sequence[dict[str, int]], in_channels: int = 1, pool: int = 2) -> NASCNN:
        chans = [in_channels] + [layer["filters"] for layer in design]
        return NASCNN(design, in_channels, pool, [self.get(i, layer, c) for i, (layer, c) in enumerate(zip(design, chans))])

    def state_dict_keys(self) -> list[str]:
        return list(self.layers.keys())


class NASEvaluator:
    """Reward of a design: its Prototypical network's validation accuracy after brief training.

    With ``share=True`` children are assembled from a :class:`SharedBank`, so each starts from
    the weights earlier children trained; ``False`` trains every child from scratch.
    """

    def __init__(self, task: FewShotTask, share: bool = True, in_channels: int = 1, pool: int = 2) -> None:
        self.task, self.share, self.in_channels, self.pool = task, share, in_channels, pool
        self.bank = SharedBank()

    def __call__(self, design: list[dict[str, int]], seed: int) -> float:
        torch.manual_seed(seed)
        net = self.bank.build(design, self.in_channels, self.pool) if self.share else NASCNN(design, self.in_channels, self.pool)
        return self.task.score(net, seed)

    def state_dict(self) -> dict[str, Any]:
        return {"keys": self.bank.state_dict_keys(), "bank": self.bank.state_dict()}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        for key in st["keys"]:
            _, f, k, c = key.split("_")
            kh, kw = (int(v) for v in k[1:].split("x"))
            self.bank.layers[key] = make_layer({"filters": int(f[1:]), "kernel_h": kh, "kernel_w": kw,
                                                "stride_h": 1, "stride_w": 1}, int(c[1:]))
        self.bank.load_state_dict(st["bank"])


def rebuild_info(design: list[dict[str, int]]) -> dict[str, Any]:
    """How to rebuild a design: the backbone name and kwargs train_h.py / create_model take."""
    return {"backbone": "nas_cnn", "backbone_kwargs": {"layers": design, "in_channels": 1, "pool": 2},
            "python": "import h_model.search.nas; h_model.create_model('proto', 'nas_cnn', backbone_kwargs)",
            "train": "python training/train_h.py --config training/configs/nas_best_omniglot.yaml "
                     "(backbone_kwargs from this entry)"}
