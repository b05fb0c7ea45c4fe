"""The GP head's optimisers without torch.optim: the same Adam update, L-BFGS-B through SciPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xfer.repurposers._optim import Adam, minimize_lbfgs


def _quadratic_problem():
    torch.manual_seed(0)
    a = torch.randn(5, 3, dtype=torch.float64)
    b = torch.randn(2, dtype=torch.float64)
    params = [torch.zeros(5, 3, dtype=torch.float64, requires_grad=True), torch.zeros(2, dtype=torch.float64, requires_grad=True)]

    def loss_fn() -> torch.Tensor:
        return ((params[0] - a) ** 2).sum() + ((params[1] - b) ** 4).sum() + (params[0].sum() * params[1].sum()) ** 2

    return params, loss_fn, (a, b)


def test_adam_takes_the_steps_of_torch_optim_adam():
    ours, loss_ours, _ = _quadratic_problem()
    theirs, loss_theirs, _ = _quadratic_problem()
    ours_opt, theirs_opt = Adam(ours, lr=0.05), torch.optim.Adam(theirs, lr=0.05)
    for _ in range(30):
        for opt, loss_fn in ((ours_opt, loss_ours), (theirs_opt, loss_theirs)):
            opt.zero_grad()
            loss_fn().backward()
            opt.step()
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine, reference, rtol=1e-12, atol=1e-12)


def test_adam_skips_parameters_without_gradient():
    used, unused = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = Adam([used, unused], lr=0.1)
    opt.zero_grad()
    (used**2).sum().backward()
    opt.step()
    assert torch.equal(unused.detach(), torch.ones(2)) and not torch.equal(used.detach(), torch.ones(2))


def test_minimize_lbfgs_finds_the_minimum_and_updates_in_place():
    params, loss_fn, _ = _quadratic_problem()
    start = float(loss_fn())
    calls = []

    def counted() -> torch.Tensor:
        calls.append(1)
        return loss_fn()

    minimize_lbfgs(params, counted, max_evaluations=200)
    grads = torch.autograd.grad(loss_fn(), params)
    assert float(loss_fn()) < start * 1e-3
    assert max(float(g.abs().max()) for g in grads) < 1e-4
    assert len(calls) <= 210


def test_minimize_lbfgs_respects_the_evaluation_budget():
    params, loss_fn, _ = _quadratic_problem()
    calls = []

    def counted() -> torch.Tensor:
        calls.append(1)
        return loss_fn()

    minimize_lbfgs(params, counted, max_evaluations=5)
    assert len(calls) <= 7  # L-BFGS-B may finish the line search it is in


def test_minimize_lbfgs_backs_off_from_non_finite_losses():
    x = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)

    def loss_fn() -> torch.Tensor:  # NaN left of 0.5; minimum where 2 (x - 1) (x - 0.4) = 1
        return torch.where(x < 0.5, torch.full_like(x, float("nan")), (x - 1) ** 2 - torch.log(x - 0.4)).sum()

    minimize_lbfgs([x], loss_fn, max_evaluations=100)
    assert np.isfinite(float(loss_fn().detach()))
    assert x.item() == pytest.approx((2.8 + np.sqrt(2.8**2 + 1.6)) / 4, abs=1e-4)
