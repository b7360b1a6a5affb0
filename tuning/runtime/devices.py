"""The one place that decides the device (Ascend NPU, CUDA or CPU) and everything that follows.

`python -m tuning.runtime.devices` prints `<kind> <count> <backend> <bf16>` for the shell launchers.
Set `WAIMAI_DEVICE=npu|cuda|cpu` to override the detection.
"""

import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from tuning.runtime.errors import DataError, report_errors

BACKENDS = {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}
T = TypeVar("T")


@dataclass(frozen=True)
class Device:
    kind: str  # "npu", "cuda" or "cpu"
    count: int  # accelerators visible to this process (1 for the CPU)
    bf16: bool  # native bf16 arithmetic (not emulated)
    capability: tuple[int, int] | None = None  # CUDA compute capability; None elsewhere

    @property
    def ampere_or_newer(self) -> bool:
        """A CUDA card of compute capability 8 or more: TF32 and flash attention exist there (not on V100, T4)."""
        return self.capability is not None and self.capability >= (8, 0)

    @property
    def backend(self) -> str:
        """torch.distributed / DeepSpeed communication backend for this device kind."""
        return BACKENDS[self.kind]

    def torch_device(self, local_rank: int = 0) -> torch.device:
        return torch.device("cpu") if self.kind == "cpu" else torch.device(self.kind, local_rank)

    def module(self):
        """`torch.npu` or `torch.cuda`; None on the CPU."""
        return None if self.kind == "cpu" else getattr(torch, self.kind)

    def name(self) -> str | None:
        """The accelerator's marketing name (e.g. "NVIDIA H100 80GB HBM3"); None on the CPU."""
        return None if self.kind == "cpu" else self.module().get_device_name()


def _import_torch_npu() -> bool:
    """Import torch_npu when it is installed; it registers `torch.npu`."""
    if importlib.util.find_spec("torch_npu") is None:
        return False
    try:
        import torch_npu  # noqa: F401
    except (ImportError, OSError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(
            f"torch_npu is installed but failed to load ({reason}); source CANN's set_env.sh "
            "(e.g. /usr/local/Ascend/cann/set_env.sh) or install the torch_npu that matches torch"
        ) from None
    return True


def _bind(module, local_rank: int) -> None:
    """Make this rank's card the current one before anything queries a card (a query creates a context on it)."""
    if local_rank < module.device_count():
        module.set_device(local_rank)


def _npu_device(local_rank: int) -> Device | None:
    if not _import_torch_npu() or not torch.npu.is_available():
        return None
    _bind(torch.npu, local_rank)
    bf16_check = getattr(torch.npu, "is_bf16_supported", None)
    return Device("npu", torch.npu.device_count(), bool(bf16_check()) if bf16_check else True)


def _cuda_device(local_rank: int) -> Device | None:
    if not torch.cuda.is_available():
        return None
    _bind(torch.cuda, local_rank)
    return Device(
        "cuda",
        torch.cuda.device_count(),
        torch.cuda.is_bf16_supported(including_emulation=False),
        tuple(torch.cuda.get_device_capability()),
    )


def _cpu_device(local_rank: int) -> Device:
    """The CPU (one, whatever `local_rank`): bf16 only where it has native bf16 instructions (AMX or AVX512-BF16)."""
    capability = torch.backends.cpu.get_cpu_capability()
    native_bf16 = capability == "AVX512" and _cpu_flags_have("avx512_bf16", "amx_bf16")
    return Device("cpu", 1, native_bf16)


def _cpu_flags_have(*flags: str) -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            text = cpuinfo.read()
    except OSError:
        return False
    return any(flag in text for flag in flags)


def detect_device(local_rank: int = 0) -> Device:
    """NPU if torch_npu sees one, else CUDA, else CPU; `WAIMAI_DEVICE` forces a kind.

    The card `local_rank` becomes this process's current device before any query of its properties.
    """
    forced = os.environ.get("WAIMAI_DEVICE", "").strip().lower()
    probes = {"npu": _npu_device, "cuda": _cuda_device, "cpu": _cpu_device}
    if forced:
        if forced not in probes:
            raise DataError(f"WAIMAI_DEVICE={forced!r}: expected one of npu, cuda, cpu")
        device = probes[forced](local_rank)
        if device is None:
            raise DataError(f"WAIMAI_DEVICE={forced} but no {forced} device is available")
        return device
    return _npu_device(local_rank) or _cuda_device(local_rank) or _cpu_device(local_rank)


def prepare_device(device: Device, local_rank: int = 0) -> None:
    """Per-process device setup: pick the card; on NPU use binary kernels (dynamic shapes)."""
    if device.kind == "npu":
        torch.npu.set_compile_mode(jit_compile=False)
    if device.kind != "cpu":
        device.module().set_device(local_rank)


def compute_dtype(device: Device, want_bf16: bool, want_fp16: bool = False) -> torch.dtype:
    """bf16 where asked and native, fp16 where asked (cards without bf16), else fp32; the CPU always computes in fp32.

    On the CPU bf16 is emulated (~60x slower) without bf16 instructions and ties the untuned model's label scores,
    so every CPU computes in fp32 and CPU results compare between machines.
    """
    if device.kind == "cpu":
        return torch.float32
    if want_bf16 and device.bf16:
        return torch.bfloat16
    return torch.float16 if want_fp16 else torch.float32


def free_memory_bytes(device: Device) -> int | None:
    """Free memory on this process's current card (`mem_get_info`); None on the CPU (see tuning.runtime.memory)."""
    return None if device.kind == "cpu" else int(device.module().mem_get_info()[0])


def reset_peak_memory(device: Device) -> None:
    if device.kind != "cpu":
        device.module().reset_peak_memory_stats()


def peak_memory_bytes(device: Device) -> int | None:
    """Peak allocated device memory since the last reset; None on the CPU (see bench/ for RSS)."""
    return None if device.kind == "cpu" else int(device.module().max_memory_allocated())


def synchronize(device: Device) -> None:
    if device.kind != "cpu":
        device.module().synchronize()


def timed(device: Device, work: Callable[[], T]) -> tuple[T, float]:
    """Run `work()`; return its result and its wall time in seconds, the device synchronised before both clock reads."""
    synchronize(device)
    start = time.perf_counter()
    result = work()
    synchronize(device)
    return result, time.perf_counter() - start


def _print_for_launchers() -> int:
    found = detect_device()
    print(found.kind, found.count, found.backend, int(found.bf16))
    return 0


if __name__ == "__main__":
    raise SystemExit(report_errors(_print_for_launchers))
