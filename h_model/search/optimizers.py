"""Optimizer search (Bello et al. 2017, "Neural Optimizer Search with Reinforcement Learning").

An update rule is ``delta = binary(unary1(op1), unary2(op2))`` and a step is ``w <- w - lr * delta``.
A sampled rule compiles to a working :class:`torch.optim.Optimizer` (:class:`RuleOptimizer`);
:class:`PowerSign` and :class:`AddSign` are the paper's two discovered rules, with its
linear, cyclical and restart decays of the sign term. :func:`crescent` runs the Rosenbrock
("crescent") comparison of SGD, Momentum, RMSProp, Adam and PowerSign.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .reinforce import ChoiceSpace
from .task import FewShotTask, SmallConvNet

Tensor = torch.Tensor
EPS = 1e-8

# The paper's operands, from a parameter's gradient g, its running moments and its weight w.
OPERANDS: dict[str, Callable[[dict[str, Tensor]], Tensor]] = {
    "g": lambda s: s["g"],
    "g^2": lambda s: s["g"] ** 2,
    "g^3": lambda s: s["g"] ** 3,
    "m_hat": lambda s: s["m_hat"],
    "v_hat": lambda s: s["v_hat"],
    "gamma_hat": lambda s: s["gamma_hat"],
    "sign(g)": lambda s: torch.sign(s["g"]),
    "sign(m_hat)": lambda s: torch.sign(s["m_hat"]),
    "1": lambda s: torch.ones_like(s["g"]),
    "2": lambda s: torch.full_like(s["g"], 2.0),
    "eps~N(0,0.01)": lambda s: torch.randn_like(s["g"]) * 0.1,  # variance 0.01
    "1e-4 w": lambda s: 1e-4 * s["w"],
    "1e-3 w": lambda s: 1e-3 * s["w"],
    "1e-2 w": lambda s: 1e-2 * s["w"],
    "1e-1 w": lambda s: 1e-1 * s["w"],
    "adam": lambda s: s["m_hat"] / (s["v_hat"].sqrt() + EPS),
    "rmsprop": lambda s: s["g"] / (s["v_hat"].sqrt() + EPS),
}


def _drop(p: float) -> Callable[[Tensor], Tensor]:
    return lambda x: F.dropout(x, p, training=True)  # zero with probability p (rescaled, as dropout)


UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "x": lambda x: x,
    "-x": lambda x: -x,
    "e^x": torch.exp,
    "log|x|": lambda x: torch.log(x.abs()),
    "sqrt|x|": lambda x: x.abs().sqrt(),
    "clip(x,1e-5)": lambda x: x.clamp(-1e-5, 1e-5),
    "clip(x,1e-4)": lambda x: x.clamp(-1e-4, 1e-4),
    "clip(x,1e-3)": lambda x: x.clamp(-1e-3, 1e-3),
    "drop(x,0.1)": _drop(0.1),
    "drop(x,0.3)": _drop(0.3),
    "drop(x,0.5)": _drop(0.5),
    "sign(x)": torch.sign,
}

BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "x+y": torch.add,
    "x-y": torch.sub,
    "x*y": torch.mul,
    "x/(y+delta)": lambda x, y: x / (y + EPS),
    "x^y": torch.pow,
    "x": lambda x, y: x,  # keep left
}


class OptimizerSpace(ChoiceSpace):
    """Five decisions: operand 1, operand 2, unary 1, unary 2, binary (Bello et al.'s order)."""

    def __init__(self) -> None:
        ops, un, bi = list(OPERANDS), list(UNARY), list(BINARY)
        super().__init__([("op1", ops), ("op2", ops), ("unary1", un), ("unary2", un), ("binary", bi)])


def rule_string(rule: dict[str, str]) -> str:
    """A readable formula, e.g. ``x*y(e^x(sign(g)*...), x(g))`` style: ``binary(u1(op1), u2(op2))``."""
    return f"{rule['binary']} with x={rule['unary1']}[x={rule['op1']}], y={rule['unary2']}[x={rule['op2']}]"


class PerParameterOptimizer(torch.optim.Optimizer):
    """``step`` runs the closure, then :meth:`update` on each parameter that has a gradient, with
    its state (``step`` 0 plus :meth:`init_state`'s tensors on first use)."""

    def init_state(self, p: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def update(self, p: Tensor, g: Tensor, st: dict[str, Any], group: dict[str, Any]) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st.update(self.init_state(p))
                self.update(p, p.grad, st, group)
        return loss


class RuleOptimizer(PerParameterOptimizer):
    """A compiled update rule: ``w <- w - lr * binary(unary1(op1), unary2(op2))``.

    ``m_hat``, ``v_hat``, ``gamma_hat`` are bias-corrected running averages of g, g^2 and g^3
    with decays ``betas`` (0.9, 0.999, 0.999), as in the paper.
    """

    def __init__(self, params: Iterable[nn.Parameter], rule: dict[str, str], lr: float = 0.01,
                 betas: tuple[float, float, float] = (0.9, 0.999, 0.999)) -> None:
        for key, table in (("op1", OPERANDS), ("op2", OPERANDS), ("unary1", UNARY), ("unary2", UNARY), ("binary", BINARY)):
            if rule[key] not in table:
                raise ValueError(f"unknown {key} {rule[key]!r}")
        self.rule = dict(rule)
        super().__init__(params, {"lr": lr, "betas": tuple(betas)})

    def delta(self, state: dict[str, Tensor]) -> Tensor:
        r = self.rule
        x = UNARY[r["unary1"]](OPERANDS[r["op1"]](state))
        y = UNARY[r["unary2"]](OPERANDS[r["op2"]](state))
        return BINARY[r["binary"]](x, y)

    def init_state(self, p: Tensor) -> dict[str, Tensor]:
        return dict(zip(("m", "v", "gamma"), (torch.zeros_like(p) for _ in range(3))))

    def update(self, p: Tensor, g: Tensor, st: dict[str, Any], group: dict[str, Any]) -> None:
        b1, b2, b3 = group["betas"]
        st["step"] += 1
        t = st["step"]
        st["m"].mul_(b1).add_(g, alpha=1 - b1)
        st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
        st["gamma"].mul_(b3).add_(g ** 3, alpha=1 - b3)
        s = {"g": g, "w": p, "m_hat": st["m"] / (1 - b1 ** t), "v_hat": st["v"] / (1 - b2 ** t),
             "gamma_hat": st["gamma"] / (1 - b3 ** t)}
        p.sub_(group["lr"] * self.delta(s).to(p.dtype))


# -- the paper's decays of the sign term: f(t) in [0, 1] ----------------------------------------
def decay_factor(kind: str | None, t: int, total: int, cycles: int = 1, period: int = 1000,
                 mult: float = 2.0) -> float:
    """``None``: 1; ``linear``: 1 - t/T; ``cyclical``: 0.5 (1 + cos(2 pi n t / T)) with n
    ``cycles``; ``restart``: SGDR's 0.5 (1 + cos(pi t_cur / T_i)), T_0 = ``period``, T_i *= ``mult``."""
    if kind is None:
        return 1.0
    if kind == "linear":
        return max(0.0, 1.0 - t / total)
    if kind == "cyclical":
        return 0.5 * (1 + math.cos(2 * math.pi * cycles * t / total))
    if kind == "restart":
        ti, tc = float(period), float(t)
        while tc >= ti:
            tc -= ti
            ti *= mult
        return 0.5 * (1 + math.cos(math.pi * tc / ti))
    raise ValueError("decay must be None, 'linear', 'cyclical' or 'restart'")


class _SignOptimizer(PerParameterOptimizer):
    """Shared machinery: m <- beta m + (1 - beta) g; w <- w - lr * rule(g, f(t) sign(g) sign(m))."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float, beta: float, decay: str | None,
                 decay_steps: int, cycles: int, restart_period: int, restart_mult: float) -> None:
        decay_factor(decay, 0, max(decay_steps, 1), cycles, restart_period, restart_mult)  # validates
        super().__init__(params, {"lr": lr, "beta": beta, "decay": decay, "decay_steps": decay_steps,
                                  "cycles": cycles, "restart_period": restart_period, "restart_mult": restart_mult})

    def rule(self, g: Tensor, signs: Tensor, group: dict[str, Any]) -> Tensor:
        raise NotImplementedError

    def init_state(self, p: Tensor) -> dict[str, Tensor]:
        return {"m": torch.zeros_like(p)}

    def update(self, p: Tensor, g: Tensor, st: dict[str, Any], group: dict[str, Any]) -> None:
        st["m"].mul_(group["beta"]).add_(g, alpha=1 - group["beta"])
        f = decay_factor(group["decay"], st["step"], max(group["decay_steps"], 1), group["cycles"],
                         group["restart_period"], group["restart_mult"])
        st["step"] += 1
        p.sub_(group["lr"] * self.rule(g, f * torch.sign(g) * torch.sign(st["m"]), group))


class PowerSign(_SignOptimizer):
    """PowerSign: ``delta = alpha^(f(t) sign(g) sign(m)) * g``, alpha = e by default."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 0.01, beta: float = 0.9, alpha: float = math.e,
                 decay: str | None = None, decay_steps: int = 10000, cycles: int = 1, restart_period: int = 1000,
                 restart_mult: float = 2.0) -> None:
        super().__init__(params, lr, beta, decay, decay_steps, cycles, restart_period, restart_mult)
        self.alpha = alpha

    def rule(self, g: Tensor, signs: Tensor, group: dict[str, Any]) -> Tensor:
        return torch.pow(self.alpha, signs) * g


class AddSign(_SignOptimizer):
    """AddSign: ``delta = (alpha + f(t) sign(g) sign(m)) * g``, alpha = 1 by default."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 0.01, beta: float = 0.9, alpha: float = 1.0,
                 decay: str | None = None, decay_steps: int = 10000, cycles: int = 1, restart_period: int = 1000,
                 restart_mult: float = 2.0) -> None:
        super().__init__(params, lr, beta, decay, decay_steps, cycles, restart_period, restart_mult)
        self.alpha = alpha

    def rule(self, g: Tensor, signs: Tensor, group: dict[str, Any]) -> Tensor:
        return (self.alpha + signs) * g


class OptimizerEvaluator:
    """Reward of a rule: best validation accuracy of a small conv net trained with it, over ``lrs``."""

    def __init__(self, task: FewShotTask, lrs: Sequence[float] = (1e-3, 1e-2, 1e-1), hidden: int = 16,
                 depth: int = 4, in_channels: int = 1) -> None:
        self.task, self.lrs, self.hidden, self.depth, self.in_channels = task, tuple(lrs), hidden, depth, in_channels

    def __call__(self, rule: dict[str, str], seed: int) -> float:
        best = 0.0
        for lr in self.lrs:
            torch.manual_seed(seed)
            net = SmallConvNet(nn.ReLU, self.in_channels, self.hidden, self.depth)
            best = max(best, self.task.score(net, seed, lambda ps, lr=lr: RuleOptimizer(ps, rule, lr)))
        return best


# -- the crescent (Rosenbrock) experiment --------------------------------------------------------
def rosenbrock(p: Tensor) -> Tensor:
    """(1 - x)^2 + 100 (y - x^2)^2, minimum 0 at (1, 1)."""
    return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2


CRESCENT_OPTIMIZERS: dict[str, Callable[[list[Tensor], float], torch.optim.Optimizer]] = {
    "SGD": lambda ps, lr: torch.optim.SGD(ps, lr=lr),
    "Momentum": lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9),
    "RMSProp": lambda ps, lr: torch.optim.RMSprop(ps, lr=lr),
    "Adam": lambda ps, lr: torch.optim.Adam(ps, lr=lr),
    "PowerSign": lambda ps, lr: PowerSign(ps, lr=lr),
}
CRESCENT_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def run_trajectory(make: Callable[[list[Tensor], float], torch.optim.Optimizer], lr: float,
                   start: tuple[float, float], steps: int, tol: float) -> dict[str, Any]:
    """Optimise the Rosenbrock function; the path, and the first step within ``tol`` of (1, 1)."""
    p = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    opt = make([p], lr)
    path, reached, diverged = [list(start)], None, False
    for i in range(1, steps + 1):
        opt.zero_grad()
        rosenbrock(p).backward()
        opt.step()
        xy = p.detach().tolist()
        if not all(math.isfinite(v) and abs(v) < 1e6 for v in xy):
            diverged = True
            break
        path.append(xy)
        if reached is None and math.dist(xy, (1.0, 1.0)) <= tol:
            reached = i
            break
    final = math.inf if diverged else math.dist(path[-1], (1.0, 1.0))
    return {"lr": lr, "steps_to_tol": reached, "final_distance": final, "path": path}


def crescent(out: str | Path, steps: int = 5000, start: tuple[float, float] = (-1.5, 2.0), tol: float = 1e-3,
             lrs: Sequence[float] = CRESCENT_LRS) -> dict[str, Any]:
    """SGD, Momentum, RMSProp, Adam and PowerSign on the Rosenbrock function from ``start``,
    each with its best learning rate from ``lrs`` (fewest steps to ``tol``, else the closest
    end point); writes ``crescent.png`` (trajectories over contours) and ``crescent.md``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    best: dict[str, dict[str, Any]] = {}
    for name, make in CRESCENT_OPTIMIZERS.items():
        runs = [run_trajectory(make, lr, start, steps, tol) for lr in lrs]
        best[name] = min(runs, key=lambda r: (r["steps_to_tol"] is None, r["steps_to_tol"] or 0, r["final_distance"]))
    xs, ys = torch.meshgrid(torch.linspace(-2, 2, 300), torch.linspace(-1, 3, 300), indexing="xy")
    z = torch.log10(rosenbrock(torch.stack([xs, ys])) + 1e-3)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.contour(xs.numpy(), ys.numpy(), z.numpy(), levels=30, cmap="gray", linewidths=0.6)
    for name, r in best.items():
        path = torch.tensor(r["path"])
        ax.plot(path[:, 0], path[:, 1], lw=1.4, label=f"{name} (lr={r['lr']:g})")
    ax.plot([1], [1], "k*", ms=12)
    ax.plot([start[0]], [start[1]], "ko")
    ax.set_xlim(-2, 2)
    ax.set_ylim(-1, 3)
    ax.set_title("Rosenbrock: trajectories with tuned learning rates")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "crescent.png", dpi=120)
    plt.close(fig)
    lines = [f"| optimizer | learning rate | steps to within {tol:g} of (1, 1) | final distance |", "|---|---|---|---|"]
    for name, r in best.items():
        s = str(r["steps_to_tol"]) if r["steps_to_tol"] else "not reached"
        lines.append(f"| {name} | {r['lr']:g} | {s} | {r['final_distance']:.3g} |")
    table = "\n".join(lines)
    (out / "crescent.md").write_text(table + "\n")
    return {"table": table, "start": list(start), "steps": steps, "tol": tol, "png": str(out / "crescent.png"),
            "results": {k: {kk: v for kk, v in r.items() if kk != "path"} for k, r in best.items()}}
