"""torch_npu's fused RMSNorm, swapped into a loaded model on Atlas A2/A3 NPUs; the model file has no device code.

`BAICHUAN_NPU_FUSED_KERNELS=0` keeps the plain RMSNorm everywhere.
"""

import os

import torch
from torch import nn

from tuning.model.classes import BaichuanRMSNorm
from tuning.runtime.devices import Device

# torch_npu documents npu_rms_norm for the Atlas A2/A3 training products: these SoC names. Elsewhere the plain norm.
FUSED_RMS_NORM_SOCS = ("Ascend910B", "Ascend910_93")
FUSED_KERNELS_SWITCH = "BAICHUAN_NPU_FUSED_KERNELS"


class NpuFusedRMSNorm(BaichuanRMSNorm):
    """BaichuanRMSNorm computed by `torch_npu.npu_rms_norm(x, gamma, epsilon)`, which returns (y, 1 / rms(x))."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        import torch_npu  # loaded by the device detection already: this class is swapped in only on an NPU

        return torch_npu.npu_rms_norm(hidden_states, self.weight, epsilon=self.variance_epsilon)[0]


def fused_rms_norm_applies(device: Device) -> bool:
    """An Atlas A2/A3 NPU whose torch_npu has the kernel, and the switch not 0."""
    if device.kind != "npu" or os.environ.get(FUSED_KERNELS_SWITCH, "1") == "0":
        return False
    import torch_npu

    return hasattr(torch_npu, "npu_rms_norm") and device.name().startswith(FUSED_RMS_NORM_SOCS)


def use_npu_fused_kernels(model: nn.Module, device: Device) -> int:
    """Make the model's RMSNorm layers use the fused kernel where it applies (same weights); how many it changed."""
    if not fused_rms_norm_applies(device):
        return 0
    norms = [module for module in model.modules() if type(module) is BaichuanRMSNorm]
    for norm in norms:
        norm.__class__ = NpuFusedRMSNorm
    return len(norms)
