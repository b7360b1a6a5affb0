"""A behavioural stand-in for `torch_npu.optim.NpuFusedAdamW` (torch_npu 2.6 to 2.12), written from what it does.

What it keeps as the real one does, where it matters for the Trainer and DeepSpeed:
- its first `step()` copies the parameters and gradients of each param group present at that moment into one
  combined buffer per group, keyed by the group's position in `param_groups`, and points every parameter and its
  `.grad` at its slice of those buffers; the state of those parameters (`step`, `exp_avg`, `exp_avg_sq`) is made
  then, and only for parameters that had a gradient;
- every later `step()` adds 1 to `state[p]["step"]` for each parameter with a gradient in the current
  `param_groups` (a KeyError for one that was not combined), then updates group i from combined buffer i: it never
  reads `p.grad` again, so a gradient tensor assigned later (DeepSpeed ZeRO) or made anew after the gradients were
  set to None (the Trainer's `model.zero_grad()`) is not seen;
- `zero_grad(set_to_none=True)` raises ValueError; `zero_grad()` zeroes the combined gradients in place.
The update itself is AdamW with decoupled weight decay. Only fp32 parameters and amsgrad=False are covered.
"""

import math
from dataclasses import dataclass

import torch
from torch.optim import Optimizer


@dataclass
class _CombinedGroup:
    """One param group's parameters, gradients and Adam moments, each in one flat buffer."""

    params: torch.Tensor
    grads: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    step: int = 0


def _combine(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One flat copy of `tensors`."""
    return torch.cat([tensor.detach().reshape(-1) for tensor in tensors])


def _slices(buffer: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Views of `buffer` shaped as each tensor of `like`, in order."""
    views, offset = [], 0
    for tensor in like:
        views.append(buffer[offset:offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()
    return views


class NpuFusedAdamW(Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        if amsgrad:
            raise NotImplementedError("the stand-in covers amsgrad=False only")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad))
        self._combined: list[_CombinedGroup | None] | None = None  # by position in param_groups at the first step

    def _combine_group(self, group: dict) -> _CombinedGroup | None:
        params = [param for param in group["params"] if param.grad is not None]
        if not params:
            return None
        if any(param.dtype != torch.float32 for param in params):
            raise TypeError("the stand-in covers float32 parameters only")
        combined = _CombinedGroup(_combine(params), _combine([param.grad for param in params]),
                                  torch.zeros(sum(param.numel() for param in params)),
                                  torch.zeros(sum(param.numel() for param in params)))
        for param, data, grad, exp_avg, exp_avg_sq in zip(
                params, _slices(combined.params, params), _slices(combined.grads, params),
                _slices(combined.exp_avg, params), _slices(combined.exp_avg_sq, params)):
            param.data = data
            param.grad = grad
            self.state[param].update(step=0, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
        return combined

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._combined is None:
            self._combined = [self._combine_group(group) for group in self.param_groups]
        for index, group in enumerate(self.param_groups):
            for param in group["params"]:
                if param.grad is not None:
                    self.state[param]["step"] += 1
            combined = self._combined[index] if index < len(self._combined) else None
            if combined is not None:
                self._update(group, combined)
        return loss

    @staticmethod
    def _update(group: dict, combined: _CombinedGroup) -> None:
        beta1, beta2 = group["betas"]
        combined.step += 1
        combined.params.mul_(1 - group["lr"] * group["weight_decay"])
        combined.exp_avg.mul_(beta1).add_(combined.grads, alpha=1 - beta1)
        combined.exp_avg_sq.mul_(beta2).addcmul_(combined.grads, combined.grads, value=1 - beta2)
        denominator = (combined.exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** combined.step)).add_(group["eps"])
        combined.params.addcdiv_(combined.exp_avg, denominator, value=-group["lr"] / (1 - beta1 ** combined.step))

    @torch.no_grad()
    def zero_grad(self, set_to_none: bool = False):
        if set_to_none:
            raise ValueError("set_to_none is not supported in fused optimizers")
        if self._combined is None:
            super().zero_grad(set_to_none=False)
            return
        for combined in self._combined:
            if combined is not None:
                combined.grads.zero_()
