import subprocess
import sys

import pytest
import torch
from transformers.utils import is_flash_attn_2_available

from tuning.model.baichuan import attention_implementation
from tuning.runtime.devices import Device, compute_dtype, detect_device
from tuning.runtime.errors import DataError


def test_this_machine_is_a_cpu_with_gloo(monkeypatch):
    monkeypatch.delenv("WAIMAI_DEVICE", raising=False)
    device = detect_device()
    assert (device.kind, device.count, device.backend) == ("cpu", 1, "gloo")
    assert device.torch_device(3) == torch.device("cpu")


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
        "source CANN's set_env.sh (e.g. /usr/local/Ascend/ascend-toolkit/set_env.sh) or install the torch_npu "
        "that matches torch"
    ]


def test_backends_and_dtypes_follow_the_device():
    assert [Device(kind, 1, True).backend for kind in ("npu", "cuda", "cpu")] == ["hccl", "nccl", "gloo"]
    assert compute_dtype(Device("cpu", 1, False), want_bf16=True) == torch.float32
    assert compute_dtype(Device("npu", 8, True), want_bf16=True) == torch.bfloat16
    assert compute_dtype(Device("npu", 8, True), want_bf16=False) == torch.float32


def test_attention_is_fused_only_where_it_exists():
    assert attention_implementation(Device("npu", 8, True), torch.bfloat16) == "flash_attention_2"
    assert attention_implementation(Device("npu", 8, True), torch.float32) == "sdpa"
    cuda_fused = "flash_attention_2" if is_flash_attn_2_available() else "sdpa"
    assert attention_implementation(Device("cuda", 1, True), torch.bfloat16) == cuda_fused
    assert attention_implementation(Device("cpu", 1, False), torch.float32) == "sdpa"
