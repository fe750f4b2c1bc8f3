"""The LSTM meta-learner of Ravi & Larochelle (2017), "Optimization as a model for few-shot learning".

The learner (backbone + linear head, see :mod:`.common`) is updated by an LSTM-like cell whose
cell state *is* the learner's parameter vector::

    c_t = f_t * c_{t-1} + i_t * (-grad_t),   c_0 = theta_0 (meta-learned),   theta_t = c_t
    i_t = sigmoid(w_i . [h_t, theta_{t-1}, i_{t-1}] + b_i)
    f_t = sigmoid(w_f . [h_t, theta_{t-1}, f_{t-1}] + b_f)

Everything is coordinate-wise with parameters shared across coordinates: ``h_t`` is the hidden
state of a small first-layer LSTM (``hidden`` units) fed, per coordinate, the preprocessed
gradient and support loss ``[pre(grad_t), pre(L_t)]`` (the preprocessing of Andrychowicz et al.
2016 the paper uses: ``x -> (log|x|/p, sign x)`` if ``|x| >= e^-p`` else ``(-1, e^p x)``).
As in the paper, gradients and losses are inputs only: the meta-gradient does not flow through
them (no second derivatives). The forget-gate bias starts large (f ~ 1) and the input-gate bias
small (i ~ 0.01), as the paper recommends. Meta-loss: query cross-entropy after the last step.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad_and_value, vmap

from ..models.base import MODELS
from .common import AdaptiveLearner, Params


def preprocess(x: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    """``[...]`` -> ``[..., 2]``: (log|x|/p, sign x) for |x| >= e^-p, else (-1, e^p x)."""
    big = x.abs() >= math.exp(-p)
    a = torch.where(big, x.abs().clamp_min(math.exp(-p)).log() / p, torch.full_like(x, -1.0))
    b = torch.where(big, x.sign(), math.exp(p) * x)
    return torch.stack([a, b], dim=-1)


class LSTMMetaLearner(AdaptiveLearner):
    """Learner updated by a meta-learned, coordinate-wise LSTM cell (``steps`` updates per task)."""

    def __init__(self, backbone: nn.Module, dim: int, steps: int = 5, test_steps: int = 10, hidden: int = 20,
                 max_way: int = 20) -> None:
        super().__init__(backbone, dim, max_way)
        if steps < 1 or test_steps < 1:
            raise ValueError("steps and test_steps must be >= 1")
        self.steps, self.test_steps = steps, test_steps
        self.lstm = nn.LSTMCell(4, hidden)
        self.w_i = nn.Parameter(torch.empty(hidden + 2).uniform_(-0.01, 0.01))
        self.w_f = nn.Parameter(torch.empty(hidden + 2).uniform_(-0.01, 0.01))
        self.b_i = nn.Parameter(torch.empty(1).uniform_(-5.0, -4.0))
        self.b_f = nn.Parameter(torch.empty(1).uniform_(4.0, 6.0))

    def run(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, way: int,
            head_only: bool = False) -> tuple[torch.Tensor, Params]:
        """(query logits ``[B, Q, N]`` after the LSTM's updates, final parameters batched ``[B, ...]``)."""
        outer = torch.is_grad_enabled()
        steps = self.steps if self.training else self.test_steps
        logits_fn = (lambda p, z: z @ p["head_w"].T + p["head_b"]) if head_only else self.learner_logits
        phi = self.task_params(way, head_only, outer)
        names, shapes = list(phi), [v.shape for v in phi.values()]
        sizes = [s.numel() for s in shapes]
        B = support_x.shape[0]

        def unflat(t: torch.Tensor) -> Params:
            return {k: v.reshape(B, *s) for k, v, s in zip(names, t.split(sizes, dim=1), shapes)}

        loss_grad = vmap(grad_and_value(lambda p, x, y: F.cross_entropy(logits_fn(p, x), y)))
        theta = torch.cat([v.reshape(-1) for v in phi.values()]).expand(B, -1)  # c_0 = theta_0, [B, P]
        P, H = theta.shape[1], self.lstm.hidden_size
        state = (theta.new_zeros(B * P, H), theta.new_zeros(B * P, H))
        f = i = theta.new_zeros(B, P)
        for _ in range(steps):
            with torch.enable_grad():  # the learner's gradient, also under torch.no_grad()
                g, loss = loss_grad(unflat(theta.detach()), support_x, support_y)
            g = torch.cat([g[k].reshape(B, -1) for k in names], dim=1).detach()
            x = torch.cat([preprocess(g), preprocess(loss.detach())[:, None].expand(B, P, 2)], dim=-1)
            state = self.lstm(x.reshape(B * P, 4), state)
            h = state[0].reshape(B, P, H)
            f = torch.sigmoid(torch.cat([h, theta[..., None], f[..., None]], -1) @ self.w_f + self.b_f)
            i = torch.sigmoid(torch.cat([h, theta[..., None], i[..., None]], -1) @ self.w_i + self.b_i)
            theta = f * theta - i * g
        final = unflat(theta)
        return vmap(logits_fn)(final, query_x), final


@MODELS.register("lstm")
def lstm(backbone: nn.Module, dim: int, steps: int = 5, test_steps: int = 10, hidden: int = 20,
         max_way: int = 20) -> LSTMMetaLearner:
    return LSTMMetaLearner(backbone, dim, steps, test_steps, hidden, max_way)
