"""Optimisers for the GP head's few parameter tensors, without ``torch.optim``.

Building any ``torch.optim`` optimiser imports ``torch._dynamo`` the first time in a process
(``Optimizer.add_param_group`` is wrapped by ``torch._disable_dynamo``): 2-3 seconds on this
project's machines, more than a whole exact-GP fit on a few hundred points, paid by every user's
first fit. These two do the same job without it:

* :class:`Adam` is ``torch.optim.Adam``'s single-tensor update (the one torch uses for CPU
  tensors), with its defaults (betas 0.9/0.999, eps 1e-8, no weight decay, no AMSGrad).
* :func:`minimize_lbfgs` runs SciPy's L-BFGS-B (a strong-Wolfe line search, as GPy, the GP library
  of Xfer, does) on the flattened parameters, with gradients from autograd.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch


class Adam:
    """``torch.optim.Adam(params, lr)`` for a few tensors: ``zero_grad()`` and ``step()``."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, (self.beta1, self.beta2), self.eps = float(lr), betas, float(eps)
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.steps = [0] * len(self.params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for i, (p, exp_avg, exp_avg_sq) in enumerate(zip(self.params, self.exp_avg, self.exp_avg_sq)):
            if p.grad is None:
                continue
            self.steps[i] += 1
            grad = p.grad
            exp_avg.lerp_(grad, 1 - self.beta1)
            exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad.conj(), value=1 - self.beta2)
            bias_correction1 = 1 - self.beta1 ** self.steps[i]
            bias_correction2_sqrt = math.sqrt(1 - self.beta2 ** self.steps[i])
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
            p.addcdiv_(exp_avg, denom, value=-self.lr / bias_correction1)


def minimize_lbfgs(
    params: Iterable[torch.Tensor], loss_fn: Callable[[], torch.Tensor], max_evaluations: int
) -> None:
    """Minimise ``loss_fn()`` over ``params`` (updated in place) with SciPy's L-BFGS-B.

    At most about ``max_evaluations`` evaluations of ``loss_fn`` (each with its backward pass); the
    parameters end at SciPy's answer. A non-finite loss (a failed Cholesky step far from the
    optimum) counts as a very large loss, so the line search backs off.
    """
    from scipy.optimize import minimize

    params = [p for p in params if p.requires_grad]
    sizes = [p.numel() for p in params]

    def assign(theta: np.ndarray) -> None:
        flat = torch.as_tensor(theta)
        with torch.no_grad():
            for p, chunk in zip(params, torch.split(flat, sizes)):
                p.copy_(chunk.reshape(p.shape).to(dtype=p.dtype, device=p.device))

    def value_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        assign(theta)
        for p in params:
            p.grad = None
        loss = loss_fn()
        loss.backward()
        grad = torch.cat([
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to("cpu", torch.float64)
            for p in params
        ])  # fmt: skip
        value = float(loss.detach())
        if not math.isfinite(value) or not bool(torch.isfinite(grad).all()):
            return 1e30, np.zeros(len(theta))
        return value, grad.numpy()

    start = torch.cat([p.detach().reshape(-1).to("cpu", torch.float64) for p in params]).numpy()
    result = minimize(
        value_and_grad, start, jac=True, method="L-BFGS-B",
        options={"maxfun": int(max_evaluations), "maxiter": int(max_evaluations), "gtol": 1e-7},
    )  # fmt: skip
    assign(result.x)
