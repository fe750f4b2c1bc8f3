"""Activation-function search (Ramachandran et al. 2017, "Searching for Activation Functions").

A core unit is ``b(u1(a), u2(x))``; one unit is ``b(u1(x), u2(x))``, a second unit takes the
first unit's output and the pre-activation: ``b2(u3(y1), u4(x))``. ``beta`` is one trainable
scalar per activation module. A small conv net trains with the candidate on few-shot episodes;
its validation accuracy is the reward, and NaN/overflowing candidates get the lowest reward.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .reinforce import ChoiceSpace
from .task import FewShotTask, SmallConvNet

Tensor = torch.Tensor
EPS = 1e-3  # the epsilon of log(|x| + eps) and x1 / (x2 + eps)

UNARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "x": lambda x, b: x,
    "-x": lambda x, b: -x,
    "|x|": lambda x, b: x.abs(),
    "x^2": lambda x, b: x ** 2,
    "x^3": lambda x, b: x ** 3,
    "sqrt(x)": lambda x, b: torch.sqrt(x),
    "beta*x": lambda x, b: b * x,
    "x+beta": lambda x, b: x + b,
    "log(|x|+eps)": lambda x, b: torch.log(x.abs() + EPS),
    "exp(x)": lambda x, b: torch.exp(x),
    "sin(x)": lambda x, b: torch.sin(x),
    "cos(x)": lambda x, b: torch.cos(x),
    "sinh(x)": lambda x, b: torch.sinh(x),
    "cosh(x)": lambda x, b: torch.cosh(x),
    "tanh(x)": lambda x, b: torch.tanh(x),
    "asinh(x)": lambda x, b: torch.asinh(x),
    "atan(x)": lambda x, b: torch.atan(x),
    "sinc(x)": lambda x, b: torch.sinc(x / math.pi),  # sin(x) / x
    "max(x,0)": lambda x, b: torch.clamp(x, min=0),
    "min(x,0)": lambda x, b: torch.clamp(x, max=0),
    "sigmoid(x)": lambda x, b: torch.sigmoid(x),
    "log(1+exp(x))": lambda x, b: torch.nn.functional.softplus(x),
    "exp(-x^2)": lambda x, b: torch.exp(-x ** 2),
    "erf(x)": lambda x, b: torch.erf(x),
    "beta": lambda x, b: b.expand_as(x),
}

BINARY: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "x1+x2": lambda x1, x2, b: x1 + x2,
    "x1*x2": lambda x1, x2, b: x1 * x2,
    "x1-x2": lambda x1, x2, b: x1 - x2,
    "x1/(x2+eps)": lambda x1, x2, b: x1 / (x2 + EPS),
    "max(x1,x2)": lambda x1, x2, b: torch.maximum(x1, x2),
    "min(x1,x2)": lambda x1, x2, b: torch.minimum(x1, x2),
    "sigmoid(x1)*x2": lambda x1, x2, b: torch.sigmoid(x1) * x2,
    "exp(-beta(x1-x2)^2)": lambda x1, x2, b: torch.exp(-b * (x1 - x2) ** 2),
    "exp(-beta|x1-x2|)": lambda x1, x2, b: torch.exp(-b * (x1 - x2).abs()),
    "beta*x1+(1-beta)*x2": lambda x1, x2, b: b * x1 + (1 - b) * x2,
}
UNIT = ("unary1", "unary2", "binary")


class ActivationSpace(ChoiceSpace):
    """``units`` (1 or 2) core units, each (unary 1, unary 2, binary)."""

    def __init__(self, units: int = 1) -> None:
        if units not in (1, 2):
            raise ValueError("an activation is one or two core units deep")
        self.units = units
        opts = {"unary1": list(UNARY), "unary2": list(UNARY), "binary": list(BINARY)}
        super().__init__([(f"unit{i}.{k}", opts[k]) for i in range(units) for k in UNIT])

    def decode(self, actions: Sequence[int]) -> dict[str, Any]:
        flat = super().decode(actions)
        return {"units": [{k: flat[f"unit{i}.{k}"] for k in UNIT} for i in range(self.units)]}


def formula(design: dict[str, Any]) -> str:
    """A readable nesting, e.g. ``b[x1*x2](u[x](x), u[sigmoid(x)](x))`` for x * sigmoid(x)."""
    expr = "x"
    for u in design["units"]:
        expr = f"b[{u['binary']}](u[{u['unary1']}]({expr}), u[{u['unary2']}](x))"
    return expr


class SearchedActivation(nn.Module):
    """A design as a module; ``beta`` (init 1) is trainable unless ``trainable_beta=False``."""

    def __init__(self, design: dict[str, Any], beta: float = 1.0, trainable_beta: bool = True) -> None:
        super().__init__()
        units = design["units"]
        if not 1 <= len(units) <= 2:
            raise ValueError("an activation is one or two core units deep")
        for u in units:
            if u["unary1"] not in UNARY or u["unary2"] not in UNARY or u["binary"] not in BINARY:
                raise ValueError(f"unknown building block in {u}")
        self.design = {"units": [dict(u) for u in units]}
        b = torch.tensor(float(beta))
        self.beta = nn.Parameter(b) if trainable_beta else nn.Buffer(b)

    def forward(self, x: Tensor) -> Tensor:
        y = x
        for u in self.design["units"]:
            y = BINARY[u["binary"]](UNARY[u["unary1"]](y, self.beta), UNARY[u["unary2"]](x, self.beta), self.beta)
        return y


class Swish(nn.Module):
    """Swish: ``x * sigmoid(beta * x)``; ``beta`` fixed (default 1, i.e. SiLU) or trainable."""

    def __init__(self, beta: float = 1.0, trainable: bool = False) -> None:
        super().__init__()
        b = torch.tensor(float(beta))
        self.beta = nn.Parameter(b) if trainable else nn.Buffer(b)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.beta * x)


class ActivationEvaluator:
    """Reward of a design: validation accuracy of a small conv net using it after brief training."""

    def __init__(self, task: FewShotTask, hidden: int = 16, depth: int = 4, in_channels: int = 1) -> None:
        self.task, self.hidden, self.depth, self.in_channels = task, hidden, depth, in_channels

    def __call__(self, design: dict[str, Any], seed: int) -> float:
        torch.manual_seed(seed)
        net = SmallConvNet(lambda: SearchedActivation(design), self.in_channels, self.hidden, self.depth)
        return self.task.score(net, seed)
