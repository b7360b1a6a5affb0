"""What only a GPU or NPU can show: bf16 kernels, fused attention, DeepSpeed over NCCL/HCCL (2 ranks where there are two
devices), LoRA over a half-precision base on one device, a model of 1B parameters. The recipes' optimizer under ZeRO-2
on the device is tests/transformers_modify/test_npu_optimizer.py.

Every test here is marked `accelerator` and skips on a CPU-only machine ("needs a GPU or NPU"). One command runs
them with the benchmarks on a machine that has one: `bash tools/device_check.sh` (see docs/hardware.md).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers.utils import is_flash_attn_2_available

from tuning.data.encode import load_split
from tuning.data.prompt import PromptFormat
from tuning.eval.scoring import label_log_probs
from tuning.model.baichuan import BaichuanForCausalLM, load_model, load_tokenizer
from tuning.runtime.devices import compute_dtype, detect_device, prepare_device

pytestmark = pytest.mark.accelerator
TIMEOUT_S = 600
BF16_ATOL = 6e-2  # bf16 keeps 8 bits of mantissa; the tiny reference's logits are of order 1


@pytest.fixture(scope="module")
def device():
    found = detect_device()
    prepare_device(found)
    return found


@pytest.fixture(scope="module")
def half(device) -> torch.dtype:
    """The device's half precision: bf16 where native, else fp16 (pre-Ampere GPUs)."""
    return compute_dtype(device, want_bf16=True, want_fp16=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch(repo_root: Path, args: list[str], **env: str) -> subprocess.CompletedProcess:
    """`bash ds_run_bf16.sh` on one device with this interpreter."""
    full_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                "PYTHON": sys.executable, "NUM_DEVICES": "1", "MASTER_PORT": str(_free_port()), **env}
    return subprocess.run(["bash", "ds_run_bf16.sh", *args], cwd=repo_root, env=full_env, capture_output=True,
                          text=True, timeout=TIMEOUT_S)


def _save_in_the_official_layout(model: BaichuanForCausalLM, folder: Path) -> None:
    """config.json and two bf16 pickled shards with pytorch_model.bin.index.json, as Baichuan2-7B-Base ships."""
    model.config.save_pretrained(folder)
    state = {name: tensor.to(torch.bfloat16) for name, tensor in model.state_dict().items()}
    names = list(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
              "pytorch_model-00002-of-00002.bin": names[len(names) // 2 :]}
    weight_map = {}
    for file_name, shard_names in shards.items():
        torch.save({name: state[name] for name in shard_names}, folder / file_name)
        weight_map |= dict.fromkeys(shard_names, file_name)
    total = sum(tensor.numel() * tensor.element_size() for tensor in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


@pytest.mark.parametrize("attention", ["eager", "sdpa", "flash_attention_2"])
def test_reference_model_on_the_device_matches_the_official_outputs(reference_dir, device, half, attention):
    if attention == "flash_attention_2" and not (device.kind == "npu" or (
            device.ampere_or_newer and is_flash_attn_2_available())):
        pytest.skip("flash attention is not installed or not supported by this card")
    cases = load_file(reference_dir / "cases.safetensors")
    model = BaichuanForCausalLM.from_pretrained(str(reference_dir), dtype=half, attn_implementation=attention)
    model = model.to(device.torch_device()).eval()
    with torch.no_grad():
        logits = model(input_ids=cases["input_ids"].to(model.device),
                       attention_mask=cases["attention_mask"].to(model.device)).logits.float().cpu()
    real = cases["attention_mask"].bool()
    torch.testing.assert_close(logits[real], cases["logits_eval"][real], rtol=0, atol=BF16_ATOL)


def test_label_scoring_on_the_device_equals_cpu_fp32(make_review_data, make_tiny_base, device, half):
    data_dir = make_review_data(train_per_label=50, eval_per_label=20)
    base = make_tiny_base(data_dir)
    tokenizer = load_tokenizer(base)
    cpu_model = load_model(base)
    prompt_format = PromptFormat.from_config(cpu_model.config)
    split = load_split(data_dir / "eval.jsonl", tokenizer, prompt_format, max_length=256)
    candidates = [prompt_format.label_ids(tokenizer, word) for word in prompt_format.label_words]
    prompts, pad = split.prompts(), cpu_model.config.pad_token_id
    on_cpu = label_log_probs(cpu_model, prompts, candidates, pad, batch_size=8)
    on_device = label_log_probs(load_model(base, dtype=half).to(device.torch_device()), prompts, candidates, pad,
                                batch_size=8)
    torch.testing.assert_close(on_device, on_cpu, rtol=2e-2, atol=BF16_ATOL)
    assert (on_device.argmax(-1) == on_cpu.argmax(-1)).float().mean() >= 0.95  # ties may flip in half precision


@pytest.mark.parametrize("ds_config", ["ds_config_bf16.json", "ds_config_zero3.json"], ids=["zero2", "zero3"])
def test_the_demo_trains_on_one_device_and_its_model_reloads(repo_root, make_review_data, device, half, tmp_path,
                                                            ds_config):
    data_dir = make_review_data(train_per_label=50, eval_per_label=10)
    result = _launch(repo_root, ["--max_steps", "4", "--save_strategy", "no", "--disable_tqdm", "true"],
                     DEMO="1", DEMO_BASE_MODEL=str(tmp_path / "base"), DEMO_OUTPUT_DIR=str(tmp_path / "tuned"),
                     TRAIN_DATA=str(data_dir / "train.jsonl"), EVAL_DATA=str(data_dir / "eval.jsonl"),
                     DS_CONFIG=ds_config)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "tuned" / "train_summary.json").read_text(encoding="utf-8"))
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}[half]
    assert (summary["device"], summary["precision"], summary["global_step"]) == (device.kind, precision, 4)
    assert summary["peak_device_memory_bytes"] > 0
    reloaded = load_model(tmp_path / "tuned")
    assert all(torch.isfinite(parameter).all() for parameter in reloaded.parameters())


def test_the_demo_trains_on_two_devices_with_zero2(repo_root, make_review_data, device, half, tmp_path):
    """2 ranks over HCCL/NCCL (tools/device_check.sh runs it where there are two devices): ZeRO-2's reduce-scatter and
    all-gather, the recipes' optimizer on partitions, a checkpoint and the saved model."""
    if device.count < 2:
        pytest.skip(f"needs 2 devices for the 2-rank ZeRO-2 run; this machine has {device.count}")
    data_dir = make_review_data(train_per_label=50, eval_per_label=10)
    result = _launch(repo_root, ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "4",
                                 "--disable_tqdm", "true"],
                     DEMO="1", DEMO_BASE_MODEL=str(tmp_path / "base"), DEMO_OUTPUT_DIR=str(tmp_path / "tuned"),
                     TRAIN_DATA=str(data_dir / "train.jsonl"), EVAL_DATA=str(data_dir / "eval.jsonl"),
                     NUM_DEVICES="2", DS_CONFIG="ds_config_bf16.json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "tuned" / "train_summary.json").read_text(encoding="utf-8"))
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}[half]
    assert (summary["device"], summary["precision"], summary["processes"]) == (device.kind, precision, 2)
    assert summary["global_step"] == 4 and (tmp_path / "tuned" / "checkpoint-4" / "latest").is_file()
    manifest = json.loads((tmp_path / "tuned" / "run_manifest.json").read_text(encoding="utf-8"))
    assert (manifest["world_size"], manifest["zero_stage"]) == (2, 2)
    assert all(torch.isfinite(parameter).all() for parameter in load_model(tmp_path / "tuned").parameters())


def test_lora_trains_on_one_device_without_zero_and_merges(repo_root, make_review_data, make_tiny_base, device, half,
                                                          tmp_path):
    """USE_LORA=true with a model folder: the 7B LoRA recipe (one device, no ZeRO, gradient checkpointing) on the
    tiny base: the frozen base in half precision under autocast, the adapter in fp32, the merged model saved."""
    data_dir = make_review_data(train_per_label=50, eval_per_label=10)
    base = make_tiny_base(data_dir)
    result = _launch(repo_root, ["--max_steps", "4", "--save_strategy", "no", "--learning_rate", "1e-2",
                                 "--disable_tqdm", "true"],
                     USE_LORA="true", MODEL=str(base), OUTPUT_DIR=str(tmp_path / "run"),
                     TRAIN_DATA=str(data_dir / "train.jsonl"), EVAL_DATA=str(data_dir / "eval.jsonl"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "recipe configs/baichuan2_7b_lora.yaml" in result.stdout
    run = tmp_path / "run"
    summary = json.loads((run / "train_summary.json").read_text(encoding="utf-8"))
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}[half]
    assert (summary["device"], summary["precision"], summary["processes"]) == (device.kind, precision, 1)
    assert summary["use_lora"] and summary["global_step"] == 4 and summary["peak_device_memory_bytes"] > 0
    assert json.loads((run / "run_manifest.json").read_text(encoding="utf-8"))["zero_stage"] is None
    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    assert {tensor.dtype for tensor in adapter.values()} == {torch.float32}
    merged, original = load_model(run), load_model(base)
    assert all(torch.isfinite(parameter).all() for parameter in merged.parameters())
    assert any(not torch.equal(weight, original.state_dict()[name]) for name, weight in merged.state_dict().items())


def test_a_1b_baichuan2_in_the_official_layout_trains_through_the_launcher(repo_root, make_review_data,
                                                                        baichuan_tokenizer_model, device, tmp_path):
    """About 1.1B parameters (bench preset 1b, the real vocabulary), saved as official shards, trained 3 steps."""
    from bench.train_throughput import model_config
    from tuning.model.baichuan import BaichuanTokenizer

    model_dir = tmp_path / "baichuan2-1b"
    model_dir.mkdir()
    shutil.copy(baichuan_tokenizer_model, model_dir / "tokenizer.model")
    tokenizer = BaichuanTokenizer(vocab_file=str(model_dir / "tokenizer.model"))
    torch.manual_seed(0)
    model = BaichuanForCausalLM(model_config("1b", None, tokenizer, max_length=1024))
    assert 0.9e9 < model.num_parameters() < 1.3e9
    _save_in_the_official_layout(model, model_dir)
    tokenizer.save_pretrained(model_dir)
    del model
    data_dir = make_review_data(train_per_label=64, eval_per_label=8)
    result = _launch(repo_root, ["--max_steps", "3", "--save_strategy", "no", "--max_eval_samples", "16",
                                 "--logging_steps", "1", "--disable_tqdm", "true"],
                     MODEL=str(model_dir), OUTPUT_DIR=str(tmp_path / "run"), TRAIN_DATA=str(data_dir / "train.jsonl"),
                     EVAL_DATA=str(data_dir / "eval.jsonl"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text(encoding="utf-8"))
    assert summary["global_step"] == 3 and summary["device"] == device.kind and summary["global_batch_size"] == 32
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text(encoding="utf-8"))
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert losses and all(0 < loss < 20 for loss in losses)
