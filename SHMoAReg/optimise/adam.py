"""Adam for the one tensor instance optimisation fits, with a step size given at every step.

It computes what ``torch.optim.Adam`` (single-tensor path, no weight decay, no AMSGrad) computes, bit for
bit (tested), with the learning-rate schedule applied by the caller. The reason it exists: constructing any
``torch.optim`` optimiser imports ``torch._dynamo`` on first use, which took 1.6 s of a 12 s whole-abdomen
registration on 2 CPU cores (and of every Slicer or CLI run).
"""
from __future__ import annotations

import torch

__all__ = ["Adam"]


class Adam:
    """Adam (Kingma and Ba) on ``parameter``, a leaf tensor with ``requires_grad``.

    ``step(lr)`` moves ``parameter`` against its ``.grad`` with step size ``lr``; ``zero_grad()`` drops the
    gradient (``set_to_none``). ``betas`` and ``eps`` as in ``torch.optim.Adam``.
    """

    def __init__(self, parameter: torch.Tensor, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.parameter = parameter
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.steps = 0
        self.first = torch.zeros_like(parameter, memory_format=torch.preserve_format)
        self.second = torch.zeros_like(parameter, memory_format=torch.preserve_format)

    def zero_grad(self) -> None:
        self.parameter.grad = None

    @torch.no_grad()
    def step(self, lr: float) -> None:
        grad = self.parameter.grad
        if grad is None:
            return
        self.steps += 1
        self.first.lerp_(grad, 1 - self.beta1)
        self.second.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        step_size = lr / (1 - self.beta1**self.steps)
        denominator = (self.second.sqrt() / (1 - self.beta2**self.steps) ** 0.5).add_(self.eps)
        self.parameter.addcdiv_(self.first, denominator, value=-step_size)
