"""The recipes' optimizer on an Ascend NPU, simulated on the CPU with a stand-in for torch_npu's fused AdamW.

torch_npu's `NpuFusedAdamW` reads the gradients only on its first step (it combines them into buffers keyed by the
param group's position), so it stops with `KeyError: 'step'` under DeepSpeed ZeRO, which steps one group at a time,
and silently re-applies the first step's gradients in the Trainer's own loop, which sets gradients to None. The
stand-in (fake_torch_npu/) behaves so; transformers reaches it by `from torch_npu.optim import NpuFusedAdamW`, as it
would reach the real one. The recipes' choice, adapted for an NPU by transformers_modify and selected by
transformers, must give torch AdamW's weights under ZeRO-2 (real DeepSpeed, gloo) and in the Trainer's loop.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FAKE_TORCH_NPU = HERE / "fake_torch_npu"
TIMEOUT_S = 300
FULL, LORA = "configs/baichuan2_7b.yaml", "configs/baichuan2_7b_lora.yaml"  # ZeRO-2; no DeepSpeed


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def optimizer_steps(repo_root: Path, tmp_path: Path, recipe: str, *args: str, fake_torch_npu: bool = True,
                    **env: str) -> dict:
    """tests/transformers_modify/optimizer_steps.py in a fresh process; its JSON result."""
    output = tmp_path / f"result-{len(list(tmp_path.glob('result-*')))}.json"
    paths = [str(FAKE_TORCH_NPU)] if fake_torch_npu else []
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, str(repo_root)]), "MASTER_PORT": str(_free_port()),
                **env}
    result = subprocess.run([sys.executable, str(HERE / "optimizer_steps.py"), recipe, "--output", str(output), *args],
                            cwd=repo_root, env=full_env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0 and output.is_file(), result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(output.read_text(encoding="utf-8"))


ON_THE_CPU = {"WAIMAI_DEVICE": "cpu", "DS_ACCELERATOR": "cpu"}


@pytest.mark.parametrize("recipe, zero_stage", [(FULL, 2), (LORA, None)], ids=["zero2", "trainer-loop"])
def test_the_recipes_optimizer_on_an_npu_gives_torch_adamws_weights(repo_root, tmp_path, recipe, zero_stage):
    result = optimizer_steps(repo_root, tmp_path, recipe, "--device_kind", "npu", **ON_THE_CPU)
    assert "error" not in result, result
    assert (result["zero_stage"], result["param_groups"]) == (zero_stage, 2)
    assert result["max_difference"] < 1e-6, result


def test_the_stand_in_fails_as_torch_npus_fused_adamw_does(repo_root, tmp_path):
    """What the recipes' optimizer was on an NPU until now: stopped under ZeRO-2, wrong weights without DeepSpeed."""
    chosen = ("--device_kind", "npu", "--transformers_optim", "adamw_torch_npu_fused")
    under_zero = optimizer_steps(repo_root, tmp_path, FULL, *chosen, **ON_THE_CPU)
    assert under_zero == {"optimizer": "adamw_torch_npu_fused", "zero_stage": 2, "error": "KeyError: 'step'"}
    plain = optimizer_steps(repo_root, tmp_path, LORA, *chosen, **ON_THE_CPU)
    assert plain["optimizer_class"] == "NpuFusedAdamW" and plain["max_difference"] > 1e-3, plain


@pytest.mark.accelerator
def test_the_recipes_optimizer_under_zero2_on_the_device(repo_root, tmp_path):
    """On the device itself (tools/device_check.sh): with the real torch_npu on an NPU this is the check that the old
    choice, torch_npu's fused AdamW, failed with KeyError 'step'."""
    from tuning.runtime.devices import detect_device

    rank = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
            "DS_ACCELERATOR": detect_device().kind}
    for recipe in (FULL, LORA):
        result = optimizer_steps(repo_root, tmp_path, recipe, fake_torch_npu=False, **rank)
        assert "error" not in result, result
        assert result["param_groups"] == 2 and result["max_difference"] < 1e-5, result  # fused kernels round apart
