import subprocess
import sys

import pytest
import torch
from transformers.utils import is_flash_attn_2_available

from tuning.model import baichuan
from tuning.model.baichuan import attention_implementation
from tuning.runtime.devices import BACKENDS, Device, compute_dtype, detect_device
from tuning.runtime.errors import DataError


def test_the_detected_device_has_its_backend_and_a_device_per_rank(monkeypatch):
    monkeypatch.delenv("WAIMAI_DEVICE", raising=False)
    device = detect_device()
    assert device.backend == BACKENDS[device.kind] and device.count >= 1
    expected = torch.device("cpu") if device.kind == "cpu" else torch.device(device.kind, 0)
    assert device.torch_device(0) == expected


class FakeCuda:
    """torch.cuda of a machine with two V100s (compute capability 7.0), recording the order of the calls."""

    def __init__(self):
        self.calls = []
        self.current = 0

    def is_available(self):
        return True

    def device_count(self):
        return 2

    def set_device(self, index):
        self.calls.append(f"set_device({index})")
        self.current = index

    def is_bf16_supported(self, including_emulation=True):
        self.calls.append(f"is_bf16_supported(device {self.current}, including_emulation={including_emulation})")
        return including_emulation  # V100: emulated bf16 only

    def get_device_capability(self):
        self.calls.append(f"get_device_capability(device {self.current})")
        return (7, 0)


def test_each_rank_binds_its_card_before_any_query_and_bf16_is_native_only(monkeypatch):
    fake = FakeCuda()
    monkeypatch.setattr(torch, "cuda", fake)
    monkeypatch.setenv("WAIMAI_DEVICE", "cuda")
    device = detect_device(local_rank=1)
    assert fake.calls == ["set_device(1)", "is_bf16_supported(device 1, including_emulation=False)",
                          "get_device_capability(device 1)"]
    assert device == Device("cuda", 2, False, (7, 0))
    assert not device.ampere_or_newer and Device("cuda", 8, True, (8, 0)).ampere_or_newer


def test_cards_before_ampere_get_no_flash_attention_and_fp16_instead_of_bf16(monkeypatch):
    monkeypatch.setattr(baichuan, "is_flash_attn_2_available", lambda: True)
    v100, a100 = Device("cuda", 1, False, (7, 0)), Device("cuda", 1, True, (8, 0))
    assert attention_implementation(v100, torch.float16) == "sdpa"
    assert attention_implementation(a100, torch.bfloat16) == "flash_attention_2"
    assert compute_dtype(v100, want_bf16=False, want_fp16=True) == torch.float16
    assert compute_dtype(Device("cpu", 1, False), want_bf16=False, want_fp16=True) == torch.float32


def test_forcing_a_missing_device_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WAIMAI_DEVICE", "cuda")
    with pytest.raises(DataError, match="WAIMAI_DEVICE=cuda but no cuda device is available"):
        detect_device()
    monkeypatch.setenv("WAIMAI_DEVICE", "tpu")
    with pytest.raises(DataError, match="expected one of npu, cuda, cpu"):
        detect_device()


def test_a_broken_torch_npu_install_is_one_line_not_a_traceback(tmp_path, monkeypatch):
    (tmp_path / "torch_npu").mkdir()
    (tmp_path / "torch_npu" / "__init__.py").write_text("raise ImportError('libhccl.so: cannot open shared object file')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "tuning.runtime.devices"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: torch_npu is installed but failed to load (libhccl.so: cannot open shared object file); "
        "source CANN's set_env.sh (e.g. /usr/local/Ascend/cann/set_env.sh) or install the torch_npu "
        "that matches torch"
    ]


def test_backends_and_dtypes_follow_the_device():
    assert [Device(kind, 1, True).backend for kind in ("npu", "cuda", "cpu")] == ["hccl", "nccl", "gloo"]
    assert compute_dtype(Device("cpu", 1, False), want_bf16=True) == torch.float32
    assert compute_dtype(Device("cpu", 1, True), want_bf16=True) == torch.float32  # AVX512-BF16/AMX CPUs too
    assert compute_dtype(Device("npu", 8, True), want_bf16=True) == torch.bfloat16
    assert compute_dtype(Device("npu", 8, True), want_bf16=False) == torch.float32


def test_attention_is_fused_only_where_it_exists():
    assert attention_implementation(Device("npu", 8, True), torch.bfloat16) == "flash_attention_2"
    assert attention_implementation(Device("npu", 8, True), torch.float32) == "sdpa"
    cuda_fused = "flash_attention_2" if is_flash_attn_2_available() else "sdpa"
    assert attention_implementation(Device("cuda", 1, True, (9, 0)), torch.bfloat16) == cuda_fused
    assert attention_implementation(Device("cpu", 1, False), torch.float32) == "sdpa"
