"""A stand-in for torch_npu on a machine without an NPU: what our NPU code paths use of it, from its documentation.

- Importing torch_npu registers `torch.npu` (availability, card count and binding, the card's SoC name, bf16).
  The SoC name is `$STAND_IN_NPU_SOC` (e.g. Ascend910B3, an Atlas A2 card); each query is counted.
- `npu_fusion_attention` exists (transformers imports it) but is never called here.
- `npu_rms_norm(self, gamma, epsilon=1e-06) -> (Tensor, Tensor)`: RMSNorm as documented. `self` is float16,
  bfloat16 or float32 with 1 to 8 dimensions; `gamma` has `self`'s dtype and the shape of its last dimensions.
  The first output is y = x / Rms(x) * gamma, Rms(x) = sqrt(mean(x^2) + epsilon) over gamma's dimensions; the second
  is 1 / Rms(x) in float32 (kept for the backward pass). Each call is recorded in `rms_norm_calls`.
  Here it runs on CPU tensors, in float32, and casts y to `self`'s dtype.
"""

import os
import types

import torch

rms_norm_calls: list[tuple[torch.Size, torch.dtype]] = []
device_name_queries: list[str] = []


def _get_device_name(device=None) -> str:
    name = os.environ["STAND_IN_NPU_SOC"]
    device_name_queries.append(name)
    return name


torch.npu = types.SimpleNamespace(
    is_available=lambda: True,
    device_count=lambda: 1,
    set_device=lambda index: None,
    current_device=lambda: 0,
    get_device_name=_get_device_name,
    is_bf16_supported=lambda: True,
)


def npu_rms_norm(self: torch.Tensor, gamma: torch.Tensor, epsilon: float = 1e-06) -> tuple[torch.Tensor, torch.Tensor]:
    if self.dtype not in (torch.float16, torch.bfloat16, torch.float32) or not 1 <= self.dim() <= 8:
        raise RuntimeError(f"npu_rms_norm: unsupported input {self.dtype} with {self.dim()} dimensions")
    if gamma.dtype != self.dtype or self.shape[self.dim() - gamma.dim():] != gamma.shape:
        raise RuntimeError(f"npu_rms_norm: gamma {gamma.dtype} {tuple(gamma.shape)} does not match the input "
                           f"{self.dtype} {tuple(self.shape)}")
    rms_norm_calls.append((self.shape, self.dtype))
    reduced = tuple(range(self.dim() - gamma.dim(), self.dim()))
    x = self.to(torch.float32)
    rstd = torch.rsqrt(x.pow(2).mean(reduced, keepdim=True) + epsilon)
    return (x * rstd * gamma.to(torch.float32)).to(self.dtype), rstd


def npu_fusion_attention(*args, **kwargs):
    """transformers imports it wherever torch_npu is present; the models here use SDPA, so it is never called."""
    raise NotImplementedError("the torch_npu stand-in has no fused attention")
