"""torch_npu's fused RMSNorm (tuning/model/npu.py), reached through a stand-in torch_npu as the real one would be:
imported by the device detection, `torch.npu` registered by it, `torch_npu.npu_rms_norm` called by the model."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

STAND_IN = Path(__file__).parent / "npu_stand_in"
NORMS_PER_FORWARD = 2 * 2 + 1  # two per decoder layer of the reference model, and the final norm

# Each load in a fresh setting: the SoC the stand-in reports, BAICHUAN_NPU_FUSED_KERNELS, WAIMAI_DEVICE.
SCRIPT = """\
import json, os, sys, torch
from safetensors.torch import load_file
import torch_npu
from tuning.model.baichuan import load_model
model_dir, settings = sys.argv[1], json.loads(sys.argv[2])
cases = load_file(os.path.join(model_dir, "cases.safetensors"))
batch = dict(input_ids=cases["input_ids"], attention_mask=cases["attention_mask"])
results = []
for soc, switch, device in settings:
    os.environ.update(STAND_IN_NPU_SOC=soc, BAICHUAN_NPU_FUSED_KERNELS=switch, WAIMAI_DEVICE=device)
    torch_npu.rms_norm_calls.clear()
    torch_npu.device_name_queries.clear()
    model = load_model(model_dir).eval()
    with torch.no_grad():
        logits = model(**batch).logits
    loss = model.train()(**batch, labels=cases["labels"]).loss
    loss.backward()
    results.append({
        "norm": type(model.model.norm).__name__,
        "calls": len(torch_npu.rms_norm_calls),
        "soc_queries": len(torch_npu.device_name_queries),
        "logits_equal": torch.equal(logits, cases["logits_eval"]),
        "loss_equal": torch.equal(loss, cases["loss_train"]),
        "norm_grad": model.model.norm.weight.grad is not None,
    })
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def model_dir(reference_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("npu") / "model"
    shutil.copytree(reference_dir, folder)
    (folder / "tokenizer.model").write_bytes(b"unused here")
    return folder


def _loads(model_dir: Path, settings: list[tuple[str, str, str]]) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(STAND_IN), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(model_dir), json.dumps(settings)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_fused_kernel_only_on_atlas_a2_a3_unless_switched_off(model_dir):
    fused, a3, older, inference, switched_off, forced_cpu = _loads(model_dir, [
        ("Ascend910B3", "1", "npu"), ("Ascend910_9391", "1", "npu"), ("Ascend910ProB", "1", "npu"),
        ("Ascend310P3", "1", "npu"), ("Ascend910B3", "0", "npu"), ("Ascend910B3", "1", "cpu"),
    ])
    for run in (fused, a3):
        assert run["norm"] == "NpuFusedRMSNorm" and run["calls"] == 2 * NORMS_PER_FORWARD  # the eval and the train pass
        assert run["soc_queries"] == 1  # decided once per load, not per forward
    for run in (older, inference, switched_off, forced_cpu):
        assert run["norm"] == "BaichuanRMSNorm" and run["calls"] == 0
    # The kernel's documented computation gives the official outputs bit for bit, and trains.
    for run in (fused, a3, older, switched_off, forced_cpu):
        assert run["logits_equal"] and run["loss_equal"] and run["norm_grad"]


def test_the_model_file_has_no_device_code():
    text = (Path(__file__).parents[2] / "Baichuan2-7B" / "modeling_baichuan.py").read_text(encoding="utf-8")
    assert "torch_npu" not in text and ".device.type" not in text
