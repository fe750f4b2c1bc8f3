"""MAML (Finn et al. 2017), first-order MAML, Meta-SGD (Li et al. 2017) and Reptile (Nichol et al. 2018).

One module, one inner loop written with ``torch.func``: ``grad`` of the support loss with
respect to a parameter dict, ``functional_call`` to run the learner with those parameters, and
``vmap`` over the tasks of a meta-batch on CUDA, a loop over them on the CPU (``use_vmap``
forces either; same numbers). On the CPU, vmap turns the per-task convolutions into grouped
ones, which ran about 2x slower than the loop here (Conv-4, 16 tasks, one thread). The outer (meta) gradient is ordinary autograd through the inner updates, so the
shared trainer's ``loss.backward()`` + Adam step works unchanged:

* ``maml``: exact second-order meta-gradient (``torch.func.grad`` keeps the graph of the inner
  gradients, i.e. ``create_graph=True`` semantics).
* ``fomaml`` (``first_order=True``): inner gradients are detached, so the meta-gradient is the
  query-loss gradient at theta_hat, applied to phi.
* ``metasgd``: per-parameter inner learning rates, meta-learned with phi.
* ``reptile``: no differentiation through the inner loop; ``episode_loss`` returns a surrogate
  whose gradient with respect to phi is mean_tasks(phi - theta_hat) and whose value is the
  query cross-entropy (for logging).

Inner steps: ``steps`` while training, ``test_steps`` in eval mode. See :mod:`.common` for the
head (zero-initialised learned init of ``max_way`` rows) and BatchNorm (per-task batch statistics).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

from ..models.base import MODELS
from .common import AdaptiveLearner, Params

METHODS = ("maml", "metasgd", "reptile")


class GradientMetaLearner(AdaptiveLearner):
    """Gradient-based meta-learning: theta <- theta - lr * grad L_support(theta), ``steps`` times.

    ``method``: maml | metasgd | reptile; ``first_order`` detaches the inner gradients;
    ``steps`` / ``test_steps``: inner steps in training / eval mode; ``inner_lr``: the inner step
    size (Meta-SGD: the initial value of its learned rates); ``max_way``: head rows, the largest
    way the model can classify; ``use_vmap``: vmap over the tasks of a batch, else a loop (None: vmap on CUDA only);
    ``head_std``: standard deviation of the head's random init (0: zeros; see :mod:`.common`).
    """

    def __init__(self, backbone: nn.Module, dim: int, method: str = "maml", first_order: bool = False,
                 steps: int = 1, test_steps: int = 3, inner_lr: float = 0.4, max_way: int = 20,
                 use_vmap: bool | None = None, head_std: float = 0.0) -> None:
        super().__init__(backbone, dim, max_way, head_std)
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}")
        if steps < 1 or test_steps < 1:
            raise ValueError("steps and test_steps must be >= 1")
        self.method, self.first_order, self.use_vmap = method, first_order, use_vmap
        self.steps, self.test_steps, self.inner_lr = steps, test_steps, inner_lr
        # Meta-SGD: one learned learning rate per learner parameter (same order as learner_params).
        self.inner_lrs = nn.ParameterList(
            [nn.Parameter(torch.full_like(p, inner_lr)) for p in self.learner_params(max_way).values()]
        ) if method == "metasgd" else None

    def learning_rates(self, way: int, keys: list[str]) -> dict[str, torch.Tensor | float]:
        if self.inner_lrs is None:
            return {k: self.inner_lr for k in keys}
        names = list(self.learner_params(way))
        lrs = {k: (a[:way] if k.startswith("head_") else a) for k, a in zip(names, self.inner_lrs)}
        return {k: lrs[k] for k in keys}

    def adapt(self, params: Params, lrs: dict[str, torch.Tensor | float], x: torch.Tensor, y: torch.Tensor,
              steps: int, second_order: bool, logits_fn: Callable[[Params, torch.Tensor], torch.Tensor]) -> Params:
        """``steps`` gradient steps on one task's support loss; differentiable through them when
        ``second_order``, else with the inner gradients detached (first order)."""
        g_fn = grad(lambda p: F.cross_entropy(logits_fn(p, x), y))
        for _ in range(steps):
            # first order: the inner gradient is a constant, so it is taken at detached parameters
            # and the outer autograd records nothing of the inner forward and backward
            g = g_fn(params if second_order else {k: v.detach() for k, v in params.items()})
            params = {k: v - lrs[k] * g[k] for k, v in params.items()}
        return params

    def run(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor, way: int,
            head_only: bool = False) -> tuple[torch.Tensor, Params]:
        """(query logits ``[B, Q, N]`` at each task's theta_hat, theta_hat batched ``[B, ...]``)."""
        outer = torch.is_grad_enabled() and self.method != "reptile"
        steps = self.steps if self.training else self.test_steps
        second_order = outer and not self.first_order
        logits_fn = (lambda p, z: z @ p["head_w"].T + p["head_b"]) if head_only else self.learner_logits
        with torch.enable_grad():  # adaptation needs autograd, also under torch.no_grad()
            phi = self.task_params(way, head_only, outer)
            lrs = self.learning_rates(way, list(phi))
            if not outer:
                lrs = {k: v.detach() if torch.is_tensor(v) else v for k, v in lrs.items()}

            def task(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> tuple[torch.Tensor, Params]:
                theta = self.adapt(phi, lrs, sx, sy, steps, second_order, logits_fn)
                return logits_fn(theta, qx), theta

            if self.use_vmap if self.use_vmap is not None else support_x.is_cuda:
                logits, theta = vmap(task)(support_x, support_y, query_x)
            else:
                outs = [task(*t) for t in zip(support_x, support_y, query_x)]
                logits = torch.stack([o[0] for o in outs])
                theta = {k: torch.stack([o[1][k] for o in outs]) for k in phi}
        if not torch.is_grad_enabled():
            logits, theta = logits.detach(), {k: v.detach() for k, v in theta.items()}
        return logits, theta

    def episode_loss(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                     query_y: torch.Tensor, way: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.method != "reptile":
            return super().episode_loss(support_x, support_y, query_x, query_y, way)
        way = int(support_y.max()) + 1 if way is None else way
        logits, theta = self.run(support_x, support_y, query_x, way)
        query_loss = F.cross_entropy(logits.reshape(-1, way), query_y.reshape(-1)).detach()
        phi = self.learner_params(way)
        # d/dphi sum(phi * (phi - theta_hat).detach()) = mean_tasks(phi - theta_hat)
        surrogate = sum((p * (p.detach() - theta[k].mean(0))).sum() for k, p in phi.items())
        return surrogate - surrogate.detach() + query_loss, logits


@MODELS.register("maml")
def maml(backbone: nn.Module, dim: int, steps: int = 1, test_steps: int = 3, inner_lr: float = 0.4,
         max_way: int = 20, use_vmap: bool | None = None, head_std: float = 0.0) -> GradientMetaLearner:
    return GradientMetaLearner(backbone, dim, "maml", False, steps, test_steps, inner_lr, max_way, use_vmap, head_std)


@MODELS.register("fomaml")
def fomaml(backbone: nn.Module, dim: int, steps: int = 1, test_steps: int = 3, inner_lr: float = 0.4,
           max_way: int = 20, use_vmap: bool | None = None, head_std: float = 0.0) -> GradientMetaLearner:
    return GradientMetaLearner(backbone, dim, "maml", True, steps, test_steps, inner_lr, max_way, use_vmap, head_std)


@MODELS.register("metasgd")
def metasgd(backbone: nn.Module, dim: int, steps: int = 1, test_steps: int = 3, inner_lr: float = 0.4,
            max_way: int = 20, first_order: bool = False, use_vmap: bool | None = None, head_std: float = 0.0
            ) -> GradientMetaLearner:
    return GradientMetaLearner(backbone, dim, "metasgd", first_order, steps, test_steps, inner_lr, max_way, use_vmap,
                               head_std)


@MODELS.register("reptile")
def reptile(backbone: nn.Module, dim: int, steps: int = 5, test_steps: int = 10, inner_lr: float = 0.1,
            max_way: int = 20, use_vmap: bool | None = None, head_std: float = 0.0) -> GradientMetaLearner:
    return GradientMetaLearner(backbone, dim, "reptile", True, steps, test_steps, inner_lr, max_way, use_vmap,
                               head_std)
