"""The search spaces hold exactly the papers' building blocks, and sampled designs train."""
import math

import torch

from h_model.search import activations as act
from h_model.search import optimizers as opt
from h_model.search.controller import Controller
from h_model.search.reinforce import LOWEST_REWARD
from h_model.search.task import SmallConvNet
from tests.search.helpers import tiny_task

BELLO_OPERANDS = ["g", "g^2", "g^3", "m_hat", "v_hat", "gamma_hat", "sign(g)", "sign(m_hat)", "1", "2",
                  "eps~N(0,0.01)", "1e-4 w", "1e-3 w", "1e-2 w", "1e-1 w", "adam", "rmsprop"]
BELLO_UNARY = ["x", "-x", "e^x", "log|x|", "sqrt|x|", "clip(x,1e-5)", "clip(x,1e-4)", "clip(x,1e-3)",
               "drop(x,0.1)", "drop(x,0.3)", "drop(x,0.5)", "sign(x)"]
BELLO_BINARY = ["x+y", "x-y", "x*y", "x/(y+delta)", "x^y", "x"]
RAMACHANDRAN_UNARY = ["x", "-x", "|x|", "x^2", "x^3", "sqrt(x)", "beta*x", "x+beta", "log(|x|+eps)", "exp(x)",
                      "sin(x)", "cos(x)", "sinh(x)", "cosh(x)", "tanh(x)", "asinh(x)", "atan(x)", "sinc(x)",
                      "max(x,0)", "min(x,0)", "sigmoid(x)", "log(1+exp(x))", "exp(-x^2)", "erf(x)", "beta"]
RAMACHANDRAN_BINARY = ["x1+x2", "x1*x2", "x1-x2", "x1/(x2+eps)", "max(x1,x2)", "min(x1,x2)", "sigmoid(x1)*x2",
                       "exp(-beta(x1-x2)^2)", "exp(-beta|x1-x2|)", "beta*x1+(1-beta)*x2"]


def test_optimizer_space_is_bellos():
    space = opt.OptimizerSpace()
    assert [n for n, _ in space.steps] == ["op1", "op2", "unary1", "unary2", "binary"]
    ops, un, bi = space.steps[0][1], space.steps[2][1], space.steps[4][1]
    assert ops == BELLO_OPERANDS and space.steps[1][1] == BELLO_OPERANDS
    assert un == BELLO_UNARY and space.steps[3][1] == BELLO_UNARY
    assert bi == BELLO_BINARY
    assert space.size() == 17 * 17 * 12 * 12 * 6


def test_activation_space_is_ramachandrans():
    for units in (1, 2):
        space = act.ActivationSpace(units)
        assert len(space.steps) == 3 * units
        for name, options in space.steps:
            assert options == (RAMACHANDRAN_BINARY if name.endswith("binary") else RAMACHANDRAN_UNARY)


def test_nas_space_is_zoph_and_les():
    from h_model.search.nas import NASSpace
    space = NASSpace(layers=2)
    assert [n for n, _ in space.steps][:5] == ["layer0.filters", "layer0.kernel_h", "layer0.kernel_w",
                                                "layer0.stride_h", "layer0.stride_w"]
    assert [o for _, o in space.steps][:5] == [[24, 36, 48, 64], [1, 3, 5, 7], [1, 3, 5, 7], [1, 2, 3], [1, 2, 3]]
    design = space.decode([3, 1, 2, 0, 2] + [0] * 5)
    assert design[0] == {"filters": 64, "kernel_h": 3, "kernel_w": 5, "stride_h": 1, "stride_w": 3}
    assert len(design) == 2


def test_building_blocks_compute_their_formulas():
    x, b = torch.tensor([-2.0, 0.5, math.pi]), torch.tensor(2.0)
    u = act.UNARY
    torch.testing.assert_close(u["sinc(x)"](x, b), torch.sin(x) / x)
    torch.testing.assert_close(u["log(|x|+eps)"](x, b), torch.log(x.abs() + act.EPS))
    torch.testing.assert_close(u["x+beta"](x, b), x + 2)
    torch.testing.assert_close(u["beta"](x, b), torch.full_like(x, 2.0))
    y = torch.tensor([1.0, -1.0, 0.0])
    torch.testing.assert_close(act.BINARY["beta*x1+(1-beta)*x2"](x, y, b), 2 * x - y)
    torch.testing.assert_close(act.BINARY["exp(-beta|x1-x2|)"](x, y, b), torch.exp(-2 * (x - y).abs()))
    torch.testing.assert_close(opt.UNARY["clip(x,1e-4)"](x * 1e-4), torch.tensor([-1e-4, 5e-5, 1e-4]))
    torch.testing.assert_close(opt.BINARY["x"](x, y), x)
    st = {"g": torch.tensor([2.0]), "w": torch.tensor([3.0]), "m_hat": torch.tensor([1.0]), "v_hat": torch.tensor([4.0]),
          "gamma_hat": torch.tensor([8.0])}
    torch.testing.assert_close(opt.OPERANDS["adam"](st), torch.tensor([0.5]))
    torch.testing.assert_close(opt.OPERANDS["rmsprop"](st), torch.tensor([1.0]))
    torch.testing.assert_close(opt.OPERANDS["1e-2 w"](st), torch.tensor([0.03]))


def sampled(space, seed: int):
    c = Controller(space.num_choices)
    actions, logp, ent = c.sample(torch.Generator().manual_seed(seed))
    assert logp.requires_grad and float(ent.detach()) > 0
    return space.decode(actions)


def test_sampled_activations_build_and_train_one_step():
    task = tiny_task()
    moved = []
    for seed in range(3):
        design = sampled(act.ActivationSpace(2), seed)
        net = SmallConvNet(lambda: act.SearchedActivation(design), hidden=8)
        before = [p.detach().clone() for p in net.parameters()]
        r = task.score(net, seed)
        assert 0.0 <= r <= 1.0
        moved.append(r > LOWEST_REWARD and any(not torch.equal(a, p) for a, p in zip(before, net.parameters())))
    assert any(moved)  # (a candidate may legitimately have zero gradients: Adam then stands still)


def test_sampled_nas_designs_build_and_train_one_step():
    from h_model.search.nas import NASEvaluator, NASSpace
    task = tiny_task()
    ev = NASEvaluator(task, share=True)
    for seed in range(3):
        design = sampled(NASSpace(3), seed)
        r = ev(design, seed)
        assert 0.0 < r <= 1.0
    assert len(ev.bank.layers) >= 3


def test_sampled_optimizer_rules_build_and_train_one_step():
    task = tiny_task()
    ev = opt.OptimizerEvaluator(task, lrs=(0.01,), hidden=8)
    for seed in range(3):
        r = ev(sampled(opt.OptimizerSpace(), seed), seed)
        assert 0.0 <= r <= 1.0
