"""PowerSign, AddSign, their decays, Swish and compiled rules against hand-computed values."""
import math

import pytest
import torch

from h_model.search.activations import ActivationEvaluator, SearchedActivation, Swish
from h_model.search.controller import Controller
from h_model.search.optimizers import (AddSign, OptimizerEvaluator, OptimizerSpace, PowerSign, RuleOptimizer,
                                       crescent, decay_factor, rosenbrock)
from h_model.search.reinforce import LOWEST_REWARD
from tests.search.helpers import tiny_task

E = math.e


def two_steps(opt_cls, grads, **kw):
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    o = opt_cls([w], lr=0.1, **kw)
    out = []
    for g in grads:
        w.grad = torch.tensor(g)
        o.step()
        out.append(w.detach().clone())
    return out


def test_powersign_matches_formula():
    # step 1: m = 0.1 g, sign(g) sign(m) = +1 -> w -= 0.1 e g
    # step 2: g = (-0.1, -1): m = (0.045 - 0.01, -0.09 - 0.1) -> signs (-1, +1)
    w1, w2 = two_steps(PowerSign, [[0.5, -1.0], [-0.1, -1.0]])
    torch.testing.assert_close(w1, torch.tensor([1 - 0.1 * E * 0.5, 2 + 0.1 * E]))
    torch.testing.assert_close(w2, w1 - 0.1 * torch.tensor([-0.1 / E, -E]))


def test_addsign_matches_formula():
    w1, w2 = two_steps(AddSign, [[0.5, -1.0], [-0.1, -1.0]])
    torch.testing.assert_close(w1, torch.tensor([1 - 0.1 * 2 * 0.5, 2 + 0.1 * 2]))
    torch.testing.assert_close(w2, w1 - 0.1 * torch.tensor([0.0, -2.0]))


def test_decays():
    assert decay_factor("linear", 5, 10) == 0.5
    assert decay_factor("linear", 12, 10) == 0.0
    assert decay_factor("cyclical", 5, 10, cycles=1) == pytest.approx(0.0)
    assert decay_factor("cyclical", 5, 10, cycles=2) == pytest.approx(1.0)
    assert decay_factor("restart", 5, 0, period=10) == pytest.approx(0.5)
    assert decay_factor("restart", 10, 0, period=10) == pytest.approx(1.0)   # restart
    assert decay_factor("restart", 20, 0, period=10) == pytest.approx(0.5)   # second period twice as long
    assert decay_factor(None, 7, 10) == 1.0
    with pytest.raises(ValueError):
        decay_factor("bogus", 0, 1)
    # linear decay over 2 steps: the second step uses f = 0.5 -> e^(0.5 s) g and (1 + 0.5 s) g
    _, w2 = two_steps(PowerSign, [[0.5, -1.0], [-0.1, -1.0]], decay="linear", decay_steps=2)
    w1, _ = two_steps(PowerSign, [[0.5, -1.0], [-0.1, -1.0]])
    torch.testing.assert_close(w2, w1 - 0.1 * torch.tensor([-0.1 * E ** -0.5, -E ** 0.5]))
    _, w2 = two_steps(AddSign, [[0.5, -1.0], [-0.1, -1.0]], decay="linear", decay_steps=2)
    w1, _ = two_steps(AddSign, [[0.5, -1.0], [-0.1, -1.0]])
    torch.testing.assert_close(w2, w1 - 0.1 * torch.tensor([-0.05, -1.5]))


def test_swish_matches_formula():
    x = torch.tensor([-1.0, 0.0, 2.0])
    torch.testing.assert_close(Swish()(x), torch.tensor([-0.268941, 0.0, 1.761594]))
    torch.testing.assert_close(Swish(beta=2.0)(x), torch.tensor([-0.119203, 0.0, 1.964028]))
    s = Swish(trainable=True)
    s(x).sum().backward()
    assert isinstance(s.beta, torch.nn.Parameter) and s.beta.grad is not None
    assert not isinstance(Swish().beta, torch.nn.Parameter)
    searched = SearchedActivation({"units": [{"unary1": "x", "unary2": "sigmoid(x)", "binary": "x1*x2"}]})
    torch.testing.assert_close(searched(x), Swish()(x))


def test_compiled_rule_matches_its_formula():
    # delta = g * e^sign(m_hat): the rule PowerSign's search found, written in the search's blocks
    rule = {"op1": "g", "op2": "sign(m_hat)", "unary1": "x", "unary2": "e^x", "binary": "x*y"}
    w1, _ = two_steps(lambda ps, lr: RuleOptimizer(ps, rule, lr), [[0.5, -1.0], [0.1, 0.1]])
    torch.testing.assert_close(w1, torch.tensor([1 - 0.1 * 0.5 * E, 2 + 0.1 / E]))
    adam = {"op1": "adam", "op2": "1", "unary1": "x", "unary2": "x", "binary": "x"}
    w1, _ = two_steps(lambda ps, lr: RuleOptimizer(ps, adam, lr), [[0.5, -1.0], [0.1, 0.1]])
    torch.testing.assert_close(w1, torch.tensor([0.9, 2.1]))  # Adam's first step: lr * sign(g)


def test_sampled_rule_compiles_and_takes_a_step():
    space = OptimizerSpace()
    c = Controller(space.num_choices)
    for seed in range(20):
        rule = space.decode(c.sample(torch.Generator().manual_seed(seed))[0])
        w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
        o = RuleOptimizer([w], rule, lr=0.1)
        assert isinstance(o, torch.optim.Optimizer)
        w.grad = torch.tensor([0.3, -0.2, 0.5])
        torch.manual_seed(seed)
        g = w.grad
        m = torch.zeros(3).add_(g, alpha=1 - 0.9) / (1 - 0.9)             # bias-corrected first moments
        v = torch.zeros(3).addcmul_(g, g, value=1 - 0.999) / (1 - 0.999)
        gam = torch.zeros(3).add_(g ** 3, alpha=1 - 0.999) / (1 - 0.999)
        st = {"g": g, "w": w.detach().clone(), "m_hat": m, "v_hat": v, "gamma_hat": gam}
        delta = o.delta(st)
        torch.manual_seed(seed)
        o.step()
        expect = torch.tensor([1.0, -2.0, 3.0]) - 0.1 * delta
        torch.testing.assert_close(w.detach(), expect, equal_nan=True)


def test_nan_candidates_get_lowest_reward():
    task = tiny_task()
    nan_act = {"units": [{"unary1": "sqrt(x)", "unary2": "x", "binary": "x1+x2"}]}
    assert ActivationEvaluator(task, hidden=8)(nan_act, 0) == LOWEST_REWARD
    swish = {"units": [{"unary1": "x", "unary2": "sigmoid(x)", "binary": "x1*x2"}]}
    assert ActivationEvaluator(task, hidden=8)(swish, 0) > LOWEST_REWARD
    nan_rule = {"op1": "g", "op2": "eps~N(0,0.01)", "unary1": "x", "unary2": "x", "binary": "x^y"}
    assert OptimizerEvaluator(task, lrs=(0.1,), hidden=8)(nan_rule, 0) == LOWEST_REWARD
    overflow = {"op1": "1", "op2": "1", "unary1": "e^x", "unary2": "x", "binary": "x/(y+delta)"}
    assert OptimizerEvaluator(task, lrs=(1e30,), hidden=8)(overflow, 0) == LOWEST_REWARD


def test_crescent(tmp_path):
    assert float(rosenbrock(torch.tensor([1.0, 1.0]))) == 0.0
    res = crescent(tmp_path, steps=200, lrs=(1e-3, 1e-2))
    assert (tmp_path / "crescent.png").stat().st_size > 10_000
    assert set(res["results"]) == {"SGD", "Momentum", "RMSProp", "Adam", "PowerSign"}
    assert "not reached" in res["table"]  # 200 steps are not enough for all of them
    assert len(res["table"].splitlines()) == 7
